"""Panacea's SVD-LoRA on a model: add the adapter, set λ, save, load (checked), and export plain LoRA at λ.

The layer itself (the math, PEFT's quirks, `PanaceaLinear`, `PanaceaLoraConfig`, λ validation) is
`pareto.models.svd_lora_layer`; its public names are re-exported here, so `pareto.models.svd_lora` stays the one
import for Panacea.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from pareto.config import VLLM_LORA_RANKS
from pareto.io import read_safetensors
from pareto.models.svd_lora_layer import (
    INIT_STD,
    PanaceaLinear,
    PanaceaLoraConfig,
    PreferenceLike,
    panacea_lora_config,
    validate_preference,
)

PANACEA_MARKER = "pareto.panacea.svd_lora.v1"
META_NAME = "meta.json"
__all__ = [
    "INIT_STD", "META_NAME", "PANACEA_MARKER", "VLLM_LORA_RANKS", "PanaceaLinear", "PanaceaLoadError",
    "PanaceaLoraConfig", "PreferenceLike", "add_panacea_adapter", "export_lora", "fold_layer", "load_panacea",
    "next_vllm_rank", "padded_alpha", "panacea_layers", "panacea_lora_config", "save_panacea", "set_preference",
    "validate_preference", "verify_panacea_model",
]


class PanaceaLoadError(ValueError):
    """A directory is not a Panacea adapter, or it came back as plain LoRA (σ and s silently dropped)."""


# ---- model-level API ---------------------------------------------------------------------------------------
def panacea_layers(model: nn.Module) -> list[PanaceaLinear]:
    return [m for m in model.modules() if isinstance(m, PanaceaLinear)]


def _targets(cfg: LoraConfig) -> list[str] | str:
    """target_modules as JSON-friendly data: a regex string stays a string, a set becomes a sorted list."""
    return cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)


def _active_adapter(model: PeftModel, adapter_name: str | None) -> str:
    name = adapter_name if adapter_name is not None else model.active_adapter
    if not isinstance(name, str):
        raise ValueError(f"several adapters are active ({name}); pass adapter_name")
    if name not in model.peft_config:
        raise ValueError(f"no adapter named {name!r}; have {sorted(model.peft_config)}")
    return name


def _check_all_panacea(model: nn.Module, adapter_name: str) -> None:
    plain = [n for n, m in model.named_modules()
             if isinstance(m, BaseTunerLayer) and not isinstance(m, PanaceaLinear)
             and adapter_name in getattr(m, "r", {})]  # `r` covers every LoRA layer type, Embedding too
    if plain:
        raise ValueError(
            f"{len(plain)} targeted module(s) are not nn.Linear and became plain LoRA layers "
            f"(e.g. {plain[:3]}); "
            "Panacea maps nn.Linear only: choose target_modules that are nn.Linear"
        )


def add_panacea_adapter(model: PreTrainedModel, cfg: PanaceaLoraConfig,
                        adapter_name: str = "default") -> PeftModel:
    """`get_peft_model` with the Panacea layer; every targeted module is checked to really be Panacea."""
    if not isinstance(cfg, PanaceaLoraConfig):
        raise TypeError("cfg must come from panacea_lora_config (a plain LoraConfig builds plain LoRA)")
    peft_model = get_peft_model(model, cfg, adapter_name=adapter_name)
    _check_all_panacea(peft_model, adapter_name)
    if not panacea_layers(peft_model):
        raise ValueError(f"target_modules {_targets(cfg)} matched no nn.Linear in the model")
    return peft_model


def set_preference(model: nn.Module, weights: PreferenceLike, adapter_name: str | None = None) -> None:
    """Write λ ([K], or [B, K]: one λ per row) into every Panacea layer, in place: no reload, no merge."""
    layers = panacea_layers(model)
    if not layers:
        raise ValueError("the model has no Panacea layers (was it loaded with load_panacea?)")
    n_objectives = {k for layer in layers for k in layer.n_objectives.values()}
    if len(n_objectives) != 1:
        raise ValueError(f"Panacea adapters disagree on K ({sorted(n_objectives)}); pass adapter_name")
    lam = validate_preference(weights, n_objectives.pop())
    if any(layer.merged for layer in layers):  # check all first, so a refusal leaves no layer half-written
        layers[0].set_preference(lam, adapter_name)  # raises the explanatory RuntimeError
    cache: dict[torch.device, torch.Tensor] = {}  # one host->device copy per device, not per layer
    for layer in layers:
        device = next(iter(layer.lora_sigma.values())).device
        if device not in cache:
            cache[device] = lam.to(device)
        layer.set_preference(cache[device], adapter_name)


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    (path / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))


def save_panacea(model: PeftModel, path: str | os.PathLike[str], adapter_name: str | None = None) -> None:
    """PEFT `save_pretrained` (safetensors) plus meta.json with the marker. λ is an input and is not saved.

    PEFT nests a non-"default" adapter in `path/<adapter_name>`; meta.json goes next to its adapter_config.
    """
    name = _active_adapter(model, adapter_name)
    cfg = model.peft_config[name]
    if not isinstance(cfg, PanaceaLoraConfig):
        raise ValueError(f"adapter {name!r} is not a Panacea adapter")
    model.save_pretrained(str(path), selected_adapters=[name], safe_serialization=True)
    out = Path(path) if name == "default" else Path(path) / name
    _write_meta(out, {
        "marker": PANACEA_MARKER, "n_objectives": cfg.panacea_n_objectives,
        "rank": cfg.r - cfg.panacea_n_objectives, "r": cfg.r, "lora_alpha": cfg.lora_alpha,
        "target_modules": _targets(cfg), "adapter_name": name, "peft_version": peft.__version__,
        "n_layers": sum(name in m.lora_A for m in panacea_layers(model)),
    })


def _read_meta(path: Path) -> dict[str, Any]:
    meta_file = path / META_NAME
    if not meta_file.is_file():
        raise PanaceaLoadError(
            f"{path} has no {META_NAME}: not a Panacea adapter (marker {PANACEA_MARKER} missing)"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("marker") != PANACEA_MARKER:
        raise PanaceaLoadError(f"{meta_file} has marker {meta.get('marker')!r}, expected {PANACEA_MARKER!r}")
    return meta


def _config_from_dir(path: Path, meta: dict[str, Any]) -> LoraConfig:
    """adapter_config.json as a PanaceaLoraConfig, which re-registers PanaceaLinear on construction."""
    raw = json.loads((path / CONFIG_NAME).read_text())
    known = {f.name for f in fields(PanaceaLoraConfig) if f.init} - {"runtime_config"}
    kwargs = {k: v for k, v in raw.items() if k in known}
    kwargs.setdefault("panacea_n_objectives", meta["n_objectives"])
    if kwargs["panacea_n_objectives"] != meta["n_objectives"]:
        raise PanaceaLoadError(f"{path}: adapter_config says K={kwargs['panacea_n_objectives']}, "
                               f"meta.json says K={meta['n_objectives']}")
    return PanaceaLoraConfig(**kwargs)


def verify_panacea_model(model: nn.Module, path: str | os.PathLike[str],
                         adapter_name: str = "default") -> None:
    """Raise PanaceaLoadError unless every LoRA layer of the file came back as PanaceaLinear with its σ and s.

    This catches the silent PEFT pitfall: loading without the custom-module registration builds plain LoRA
    layers, loads A and B, ignores σ and s, and reports nothing.
    """
    state = load_file(str(Path(path) / SAFETENSORS_WEIGHTS_NAME))
    saved = sorted(k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight"))
    n_sigma = sum(k.endswith(".lora_sigma") for k in state)
    n_scale = sum(k.endswith(".lora_pref_scale") for k in state)
    modules = dict(model.named_modules())
    problems = []
    if not (n_sigma == n_scale == len(saved)):
        problems.append(f"the file has {len(saved)} LoRA layers but {n_sigma} sigma and {n_scale} scale "
                        "tensors")
    loaded = [n for n, m in modules.items() if isinstance(m, PanaceaLinear) and adapter_name in m.lora_A]
    if len(loaded) != len(saved):
        problems.append(f"{len(loaded)} Panacea layers in the model for {len(saved)} LoRA layers in the file")
    for name in saved:
        module = modules.get(name)
        if not isinstance(module, PanaceaLinear):
            problems.append(f"{name} loaded as {type(module).__name__} (plain LoRA), not PanaceaLinear")
            continue
        for attr in ("lora_sigma", "lora_pref_scale"):
            saved_t = state.get(f"{name}.{attr}")
            live = getattr(module, attr)[adapter_name]
            if saved_t is None or not torch.equal(saved_t.to(live.device, live.dtype), live.detach()):
                problems.append(f"{name}.{attr} was not loaded from the file")
    if problems:
        raise PanaceaLoadError(
            f"{path} did not load as Panacea SVD-LoRA ({len(problems)} problem(s)): "
            + "; ".join(problems[:5])
            + ". PEFT builds plain LoRA and drops σ and s when the custom module is not registered: "
            "use load_panacea."
        )


def load_panacea(base_model: PreTrainedModel, path: str | os.PathLike[str], adapter_name: str = "default",
                 is_trainable: bool = False) -> PeftModel:
    """`PeftModel.from_pretrained` with PanaceaLinear re-registered, checked against the marker and file."""
    path = Path(path)
    meta = _read_meta(path)
    cfg = _config_from_dir(path, meta)
    read_safetensors(path / SAFETENSORS_WEIGHTS_NAME)  # truncated / pickle / corrupt: one-line CheckpointError
    model = PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name,
                                      is_trainable=is_trainable, config=cfg)
    verify_panacea_model(model, path, adapter_name)
    return model


# ---- export to plain LoRA ----------------------------------------------------------------------------------
def next_vllm_rank(r: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"rank {r} exceeds vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def padded_alpha(alpha: float, r: int, r_out: int) -> float:
    """lora_alpha for rank r_out with PEFT's scaling alpha/r unchanged (an int when it is a whole number)."""
    out = alpha * r_out / r if r_out != r else alpha
    return int(out) if float(out).is_integer() else out


def fold_layer(weight_A: torch.Tensor, weight_B: torch.Tensor, sigma: torch.Tensor, scale: torch.Tensor,
               lam: torch.Tensor, r_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One Panacea layer at λ as plain LoRA: A kept, B' = B·diag(σ ⊕ s·λ) (float32 math, cast back), both
    zero-padded to rank r_out. The one fold: `export_lora` (a loaded model) and `pareto.adapters.fold_panacea`
    (the adapter files) call it."""
    r = weight_A.shape[0]
    diag = torch.cat([sigma.float(), scale.float() * lam.to(sigma.device)])
    new_B = (weight_B.float() * diag).to(weight_B.dtype)
    new_A = weight_A
    if r_out > r:  # zero padding adds nothing to B'·A'
        new_A = torch.cat([new_A, new_A.new_zeros(r_out - r, new_A.shape[1])], dim=0)
        new_B = torch.cat([new_B, new_B.new_zeros(new_B.shape[0], r_out - r)], dim=1)
    return new_A, new_B


def export_lora(model: PeftModel, weights: PreferenceLike, path: str | os.PathLike[str], *,
                pad_to_vllm_rank: bool = True, adapter_name: str | None = None) -> None:
    """Write a plain PEFT LoRA adapter equal to the Panacea adapter at λ (safetensors only).

    A is unchanged and B' = B · diag(σ ⊕ s·λ). With rank padding, A and B' get zero rows / columns up to the
    next vLLM rank r' and lora_alpha becomes alpha·r'/r, keeping PEFT's scaling alpha/r, hence the delta.
    """
    name = _active_adapter(model, adapter_name)
    cfg = model.peft_config[name]
    if not isinstance(cfg, PanaceaLoraConfig):
        raise ValueError(f"adapter {name!r} is not a Panacea adapter")
    lam = validate_preference(weights, cfg.panacea_n_objectives)
    if lam.dim() == 2:
        if lam.shape[0] != 1:
            raise ValueError(f"export needs one preference vector, got {lam.shape[0]} rows")
        lam = lam[0]

    r = cfg.r
    r_out = next_vllm_rank(r) if pad_to_vllm_rank else r
    alpha_out = padded_alpha(cfg.lora_alpha, r, r_out)

    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for module_name, layer in model.named_modules():
            if not isinstance(layer, PanaceaLinear) or name not in layer.lora_A:
                continue
            if layer.r[name] != r:
                raise ValueError(f"{module_name} has r={layer.r[name]}, config r={r}")
            new_A, new_B = fold_layer(layer.lora_A[name].weight, layer.lora_B[name].weight, layer.lora_sigma[name],
                                      layer.lora_pref_scale[name], lam, r_out)
            tensors[f"{module_name}.lora_A.weight"] = new_A.detach().cpu().contiguous()
            tensors[f"{module_name}.lora_B.weight"] = new_B.detach().cpu().contiguous()
    if not tensors:
        raise ValueError(f"adapter {name!r} has no Panacea layers to export")

    plain = LoraConfig(
        r=r_out, lora_alpha=alpha_out, target_modules=_targets(cfg), lora_dropout=0.0, bias="none",
        task_type=cfg.task_type, base_model_name_or_path=cfg.base_model_name_or_path,
        fan_in_fan_out=cfg.fan_in_fan_out, layers_to_transform=cfg.layers_to_transform,
        layers_pattern=cfg.layers_pattern,
    )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.save_pretrained(str(out))
    save_file(tensors, str(out / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    _write_meta(out, {
        "exported_from": PANACEA_MARKER, "weights": lam.tolist(), "n_objectives": cfg.panacea_n_objectives,
        "rank": r - cfg.panacea_n_objectives, "r": r_out, "source_r": r, "lora_alpha": alpha_out,
        "source_lora_alpha": cfg.lora_alpha, "adapter_name": name,
    })
