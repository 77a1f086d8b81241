"""Plain PEFT LoRA adapters as files: read and write them, check what vLLM accepts, pad ranks, merge soups, and
fold a Panacea adapter at λ into one.

`pareto.export` turns a tracked run's front into such adapters; `pareto.generation.backend` exports a chosen point.
vLLM's `max_lora_rank` must be one of (1, 8, 16, 32, 64, ...): ranks are zero-padded up to the next one, which
adds nothing to B·A.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pareto.models.svd_lora import (
    META_NAME,
    PANACEA_MARKER,
    VLLM_LORA_RANKS,
    fold_layer,
    next_vllm_rank,
    padded_alpha,
    validate_preference,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
Adapter = tuple[dict[str, Any], dict[str, torch.Tensor]]  # (adapter_config.json as a dict, tensors)


def read_adapter(path: str | Path) -> Adapter:
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a PEFT adapter ({CONFIG_NAME} and {WEIGHTS_NAME} expected)")
    return json.loads((path / CONFIG_NAME).read_text()), load_file(str(path / WEIGHTS_NAME))


def write_adapter(path: str | Path, adapter: Adapter, meta: dict[str, Any] | None = None) -> None:
    config, tensors = adapter
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / WEIGHTS_NAME), metadata={"format": "pt"})
    if meta is not None:
        (path / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))


def lora_scaling(config: dict[str, Any]) -> float:
    """PEFT's scaling of B·A: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def vllm_problems(config: dict[str, Any]) -> list[str]:
    """Why vLLM's LoRA loader would reject this adapter config (empty when it is fine)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA)")
    if config.get("use_dora"):
        problems.append("DoRA")
    if config.get("lora_bias"):
        problems.append("lora_bias")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("rank_pattern/alpha_pattern (one rank for all layers expected)")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().split("_")[0] in ("pissa", "olora", "corda", "loftq", "eva"):
        problems.append(f"init_lora_weights={init!r}")
    if config.get("r") not in VLLM_LORA_RANKS:
        problems.append(f"rank {config.get('r')} (vLLM allows {VLLM_LORA_RANKS}; pad it)")
    return problems


def _modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k.removesuffix(".lora_A.weight") for k in tensors if k.endswith(".lora_A.weight"))


def _plain_config(template: dict[str, Any], r: int, alpha: float, modules: Sequence[str]) -> dict[str, Any]:
    """A plain LoRA adapter_config: rank r, scaling alpha/r, targets named by the modules' last component."""
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    keep = ("base_model_name_or_path", "task_type", "fan_in_fan_out", "bias", "revision")
    config = {k: template[k] for k in keep if k in template}
    config.update({"peft_type": "LORA", "r": r, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
                   "target_modules": targets, "lora_dropout": 0.0, "use_rslora": False, "use_dora": False,
                   "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
                   "init_lora_weights": True, "inference_mode": True, "bias": template.get("bias", "none")})
    return config


def pad_rank(adapter: Adapter, rank: int | None = None) -> Adapter:
    """Zero-pad every layer's A (rows) and B (columns) to `rank` (default: the next vLLM rank).

    The delta is unchanged: the new rows/columns are zero, and alpha is rescaled so alpha/r stays the same
    (rsLoRA's alpha/sqrt(r) is folded into B and the output is plain LoRA).
    """
    config, tensors = adapter
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError("cannot pad an adapter with rank_pattern/alpha_pattern: one rank for all layers expected")
    r = int(config["r"])
    r_out = next_vllm_rank(r) if rank is None else int(rank)
    if r_out < r:
        raise ValueError(f"cannot pad rank {r} down to {r_out}")
    out: dict[str, torch.Tensor] = {}
    fold = 1.0
    if config.get("use_rslora"):  # scaling alpha/sqrt(r) does not survive a change of r: fold it into B
        fold, alpha = lora_scaling(config), float(r_out)
    else:
        alpha = config["lora_alpha"] * r_out / r
    for module in _modules(tensors):
        a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
        if a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not have rank {r}")
        b = (b.float() * fold).to(b.dtype) if fold != 1.0 else b
        out[f"{module}.lora_A.weight"] = torch.cat([a, a.new_zeros(r_out - r, a.shape[1])], dim=0)
        out[f"{module}.lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], r_out - r)], dim=1)
    extra = sorted(set(tensors) - set(out))
    if extra:
        raise ValueError(f"the adapter has tensors that are not lora_A/lora_B weights: {extra[:3]}")
    if config.get("use_rslora"):
        return _plain_config(config, r_out, alpha, _modules(out)), out
    new_config = dict(config)
    new_config.update({"r": r_out, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha})
    return new_config, out


def concat_adapters(adapters: Sequence[Adapter], weights: Sequence[float], pad: bool = True) -> Adapter:
    """Rewarded Soups in delta space, exactly: one LoRA adapter with B·A = Σ λ_i s_i B_i A_i (s_i = scaling).

    Adapters with λ_i = 0 are dropped (they add nothing); a layer missing from some adapters gets zero blocks.
    The output has scaling 1 (alpha = r) and rank Σ r_i, padded to the next vLLM rank when `pad`.
    """
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"{len(adapters)} adapters for {len(weights)} weights; give one weight per adapter")
    lam = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(lam)) or (lam < 0).any():
        raise ValueError(f"soup weights must be finite and non-negative, got {lam.tolist()}")
    fan = {bool(c.get("fan_in_fan_out", False)) for c, _ in adapters}
    if len(fan) != 1:
        raise ValueError("the adapters disagree on fan_in_fan_out; they cannot be concatenated")
    kept = [(c, t, float(w)) for (c, t), w in zip(adapters, lam, strict=True) if w > 0]
    if not kept:
        raise ValueError("every soup weight is zero: nothing to export")
    for c, _, _ in kept:
        if c.get("rank_pattern") or c.get("alpha_pattern") or c.get("use_dora") or c.get("lora_bias"):
            raise ValueError("soup adapters must be plain LoRA (no rank/alpha patterns, DoRA or lora_bias)")
    modules = sorted({m for _, t, _ in kept for m in _modules(t)})
    r_total = sum(int(c["r"]) for c, _, _ in kept)
    r_out = next_vllm_rank(r_total) if pad else r_total
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        present = [t for _, t, _ in kept if f"{module}.lora_A.weight" in t][0]
        in_dim = present[f"{module}.lora_A.weight"].shape[1]
        out_dim = present[f"{module}.lora_B.weight"].shape[0]
        dtype = present[f"{module}.lora_A.weight"].dtype
        blocks_a, blocks_b = [], []
        for config, tensors, w in kept:
            r = int(config["r"])
            a, b = tensors.get(f"{module}.lora_A.weight"), tensors.get(f"{module}.lora_B.weight")
            if a is None:  # this adapter does not touch the layer
                a, b = torch.zeros(r, in_dim), torch.zeros(out_dim, r)
            blocks_a.append(a.float())
            blocks_b.append(b.float() * (w * lora_scaling(config)))  # λ_i s_i B_i (float32 math, then cast)
        a_cat, b_cat = torch.cat(blocks_a, dim=0), torch.cat(blocks_b, dim=1)
        if r_out > r_total:
            a_cat = torch.cat([a_cat, a_cat.new_zeros(r_out - r_total, in_dim)], dim=0)
            b_cat = torch.cat([b_cat, b_cat.new_zeros(out_dim, r_out - r_total)], dim=1)
        out[f"{module}.lora_A.weight"] = a_cat.to(dtype)
        out[f"{module}.lora_B.weight"] = b_cat.to(dtype)
    return _plain_config(kept[0][0], r_out, float(r_out), modules), out


def average_adapters(adapters: Sequence[Adapter], weights: Sequence[float], pad: bool = True) -> Adapter:
    """The soup of the paper's reference code: A = Σ λ_i A_i, B = Σ λ_i B_i at the shared rank and scaling
    (ΔW = s·(Σ λ_i B_i)(Σ λ_i A_i), not linear in λ). The adapters must share rank, scaling and layers."""
    if len(adapters) != len(weights) or not adapters:
        raise ValueError(f"{len(adapters)} adapters for {len(weights)} weights; give one weight per adapter")
    first, _ = adapters[0]
    for config, tensors in adapters[1:]:
        if config["r"] != first["r"] or lora_scaling(config) != lora_scaling(first):
            raise ValueError("parameter averaging needs adapters of one rank and scaling")
        if set(tensors) != set(adapters[0][1]):
            raise ValueError("parameter averaging needs adapters on the same layers")
    lam = [float(w) for w in weights]
    tensors = {key: sum(w * t[key].float() for (_, t), w in zip(adapters, lam, strict=True)).to(value.dtype)
               for key, value in adapters[0][1].items()}
    config = dict(first)
    if pad and (config["r"] not in VLLM_LORA_RANKS or config.get("use_rslora")):
        return pad_rank((config, tensors))
    return config, tensors


def fold_panacea(adapter_dir: str | Path, weights: Sequence[float], pad: bool = True) -> Adapter:
    """Panacea at λ as plain LoRA from the adapter files alone (no model load), with the fold of
    `pareto.models.svd_lora.export_lora` (`fold_layer`: A kept, B' = B·diag(σ ⊕ s·λ)), zero-padded to a vLLM rank
    with alpha·r'/r so the scaling is unchanged."""
    adapter_dir = Path(adapter_dir)
    if not is_panacea(adapter_dir):
        raise ValueError(f"{adapter_dir} is not a Panacea adapter (no {PANACEA_MARKER} marker in {META_NAME})")
    k = json.loads((adapter_dir / META_NAME).read_text())["n_objectives"]
    lam = validate_preference(weights, k)
    if lam.dim() != 1:
        raise ValueError("fold one preference vector at a time")
    config = json.loads((adapter_dir / CONFIG_NAME).read_text())
    state = load_file(str(adapter_dir / WEIGHTS_NAME))
    r = int(config["r"])
    r_out = next_vllm_rank(r) if pad else r
    out: dict[str, torch.Tensor] = {}
    for module in _modules(state):
        out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = fold_layer(
            state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"], state[f"{module}.lora_sigma"],
            state[f"{module}.lora_pref_scale"], lam, r_out)
    return _plain_config(config, r_out, padded_alpha(config["lora_alpha"], r, r_out), _modules(out)), out


def adapter_dir(root: Path) -> Path:
    """The directory holding adapter_config.json (PEFT nests non-default adapters one level down)."""
    if (root / CONFIG_NAME).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(CONFIG_NAME))
    if len(found) != 1:
        raise FileNotFoundError(f"{root}: expected one PEFT adapter, found {len(found)}")
    return found[0]


def is_panacea(path: Path) -> bool:
    """Whether `path` holds a Panacea SVD-LoRA adapter (its meta.json carries the marker)."""
    meta = path / META_NAME
    return meta.is_file() and json.loads(meta.read_text()).get("marker") == PANACEA_MARKER
