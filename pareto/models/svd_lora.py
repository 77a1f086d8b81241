"""Panacea's SVD-LoRA as a PEFT custom LoRA layer.

Per adapted linear layer (Zhong et al., NeurIPS 2024):

    W(λ) = W0 + B · diag(σ_1..σ_k, s·λ_1..s·λ_K) · A · scaling,      A = Vᵀ (r×in), B = U (out×r), r = k + K

A, B, σ (k values) and s (one scalar per layer) are trained; λ is a non-persistent buffer written by
`set_preference`, so it never gets a gradient and is never saved. σ = s = 0 at init, so a fresh adapter is
exactly the base model and only σ and s get gradient on the first step.

λ is either a vector [K] (one preference for the whole batch) or a matrix [B, K] (one per batch row: the
diagonal broadcasts as [B, 1, r] against the [B, T, r] activations, so one `generate` call, KV cache included,
serves a different λ per row).

PEFT quirks handled here (PEFT 0.21.2):
* custom layers go through the experimental `LoraConfig._register_custom_module`; the registration lives on
  the config object only, so a plain `PeftModel.from_pretrained` of a Panacea directory silently builds plain
  LoRA layers and drops σ and s. `PanaceaLoraConfig` registers itself on construction, `load_panacea` checks
  a marker in meta.json and verifies the loaded layers afterwards;
* only `nn.Linear` is mapped: a target that is not an `nn.Linear` (e.g. GPT-2's Conv1D) would fall through to
  plain LoRA, so `add_panacea_adapter` verifies every adapted module;
* merged weights hold the delta at one λ, so `set_preference` refuses merged layers (unmerge, set, merge).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from peft.utils.other import transpose
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from pareto.config import VLLM_LORA_RANKS
from pareto.io import read_safetensors

PANACEA_MARKER = "pareto.panacea.svd_lora.v1"
META_NAME = "meta.json"
INIT_STD = 0.02  # U, V ~ N(0, 0.02²) as in the paper's re-implementations
PREF_SUM_ATOL = 1e-5

PreferenceLike = torch.Tensor | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


class PanaceaLoadError(ValueError):
    """A directory is not a Panacea adapter, or it came back as plain LoRA (σ and s silently dropped)."""


# ---- preference validation ---------------------------------------------------------------------------------
def validate_preference(weights: PreferenceLike, n_objectives: int) -> torch.Tensor:
    """λ as a float32 CPU tensor of shape [K] or [B, K]; ValueError naming the problem otherwise."""
    try:
        if isinstance(weights, torch.Tensor):
            lam = weights.detach().to("cpu", torch.float64)
        else:
            lam = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"preference weights must be numeric, got {weights!r}") from exc
    if lam.dim() not in (1, 2) or lam.shape[-1] != n_objectives or lam.numel() == 0:
        raise ValueError(
            f"preference weights have shape {tuple(lam.shape)}; expected length {n_objectives} "
            f"([K]) or [B, {n_objectives}] (one row per batch row)"
        )
    if not torch.isfinite(lam).all():
        raise ValueError(f"preference weights must be finite (no NaN or inf), got {lam.tolist()}")
    if (lam < 0).any():
        raise ValueError(f"preference weights must be non-negative, got {lam.tolist()}")
    sums = lam.sum(dim=-1)
    if ((sums - 1.0).abs() > PREF_SUM_ATOL).any():
        raise ValueError(f"preference weights must sum to 1 (per row, within {PREF_SUM_ATOL}), got sums "
                         f"{sums.tolist()}")
    return lam.to(torch.float32)


# ---- the layer ---------------------------------------------------------------------------------------------
class PanaceaLinear(LoraLinear):
    """A PEFT LoRA `Linear` whose rank-r bottleneck is scaled by diag(σ ⊕ s·λ)."""

    # adapter_layer_names: trainable, saved, moved with the adapter; other_param_names: per-adapter state
    adapter_layer_names = LoraLinear.adapter_layer_names + ("lora_sigma", "lora_pref_scale")
    other_param_names = LoraLinear.other_param_names + ("lora_pref", "n_objectives")

    @property
    def lora_variants(self) -> dict:
        # DoRA & co. change forward/merge in ways the diagonal would have to be threaded through: refuse them
        return {(): None}

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config: LoraConfig,
                     **kwargs: Any) -> None:
        n_obj = getattr(config, "panacea_n_objectives", None)
        if n_obj is None:
            raise TypeError(
                "PanaceaLinear needs a PanaceaLoraConfig (from panacea_lora_config); a plain LoraConfig "
                f"cannot add adapter {adapter_name!r} to a Panacea layer"
            )
        if r <= n_obj:
            raise ValueError(f"r={r} must exceed n_objectives={n_obj} (r = rank + n_objectives)")
        # must exist before super().update_layer, which calls set_adapter over adapter_layer_names
        if not hasattr(self, "lora_sigma"):
            self.lora_sigma = nn.ParameterDict()
            self.lora_pref_scale = nn.ParameterDict()
            self.lora_pref = BufferDict(persistent=False)  # λ: never a parameter, never in the state dict
            self.n_objectives: dict[str, int] = {}
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

        self.n_objectives[adapter_name] = n_obj
        with torch.no_grad():  # zero change at init: σ = s = 0, random singular vectors
            nn.init.normal_(self.lora_A[adapter_name].weight, std=INIT_STD)
            nn.init.normal_(self.lora_B[adapter_name].weight, std=INIT_STD)
        self.lora_sigma[adapter_name] = nn.Parameter(torch.zeros(r - n_obj))
        self.lora_pref_scale[adapter_name] = nn.Parameter(torch.zeros(1))
        self.lora_pref[adapter_name] = torch.full((n_obj,), 1.0 / n_obj)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    # -- λ --
    def set_preference(self, lam: torch.Tensor, adapter_name: str | None = None) -> None:
        """Write an already validated λ ([K] or [B, K]) for one adapter, or all of this layer's adapters."""
        if self.merged:
            raise RuntimeError(
                "cannot change the preference of a merged Panacea layer: the merged weights hold the delta "
                "at the old λ. Call model.unmerge_adapter(), set_preference(...), then model.merge_adapter()."
            )
        names = [adapter_name] if adapter_name is not None else list(self.lora_pref.keys())
        for name in names:
            if self.n_objectives[name] != lam.shape[-1]:
                raise ValueError(f"adapter {name!r} has {self.n_objectives[name]} objectives, λ has "
                                 f"{lam.shape[-1]}")
            self.lora_pref[name] = lam.to(self.lora_sigma[name].device)

    def _diag(self, adapter: str, rows: list[int] | None = None) -> torch.Tensor:
        """σ ⊕ s·λ: shape [r] for a shared λ, [B, r] for per-row λ (rows selects a sub-batch)."""
        sigma, scale = self.lora_sigma[adapter], self.lora_pref_scale[adapter]
        lam = self.lora_pref[adapter].to(sigma.dtype)
        if lam.dim() == 2 and lam.shape[0] == 1:
            lam = lam[0]  # a single row is a shared λ
        if lam.dim() == 1:
            return torch.cat([sigma, scale * lam])
        if rows is not None:
            lam = lam[rows]
        return torch.cat([sigma.expand(lam.shape[0], -1), scale * lam], dim=1)

    # -- forward --
    def _panacea_delta(self, adapter: str, x: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        h = lora_A(self.lora_dropout[adapter](x))  # [..., r]
        diag = self._diag(adapter, rows)
        if diag.dim() == 2:
            if x.dim() < 2 or h.shape[0] != diag.shape[0]:
                raise ValueError(
                    f"per-row preference has {diag.shape[0]} rows but the input batch has shape "
                    f"{tuple(x.shape)}; generate() with num_return_sequences or beams expands the batch, "
                    "so repeat the λ rows to match"
                )
            diag = diag.view(diag.shape[0], *([1] * (h.dim() - 2)), diag.shape[1])
        return lora_B(h * diag) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Same control flow as peft's LoRA Linear.forward, with the diagonal between A and B.
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        for key in VARIANT_KWARG_KEYS:  # never meant for the base layer
            kwargs.pop(key, None)

        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        result_dtype = result.dtype
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                result = result + self._panacea_delta(adapter, x).to(result_dtype)
        return result

    def _mixed_batch_forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str],
                             **kwargs: Any) -> torch.Tensor:
        # peft's version would skip the diagonal; per-row λ rows follow the sub-batch
        result = self.base_layer(x, *args, **kwargs)
        for adapter in set(adapter_names):
            if adapter == "__base__" or adapter not in self.lora_A:
                continue
            rows = [i for i, name in enumerate(adapter_names) if name == adapter]
            result[rows] += self._panacea_delta(adapter, x[rows], rows).to(result.dtype)
        return result

    # -- merge support: peft's merge/unmerge call get_delta_weight for non-variant adapters --
    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        diag = self._diag(adapter)
        if diag.dim() != 1:
            raise ValueError("cannot merge a Panacea layer with per-row preferences; set a single λ first")
        weight_A, weight_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        dtype = weight_B.dtype
        if weight_B.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):  # slow on CPU in half
            weight_A, weight_B, diag = weight_A.float(), weight_B.float(), diag.float()
        delta = transpose((weight_B * diag) @ weight_A, self.fan_in_fan_out) * self.scaling[adapter]
        return delta.to(dtype)

    def __repr__(self) -> str:
        return "panacea." + super().__repr__()


# ---- the config --------------------------------------------------------------------------------------------
@dataclass
class PanaceaLoraConfig(LoraConfig):
    """A `LoraConfig` that carries K and registers `PanaceaLinear` for `nn.Linear` whenever it is built.

    `panacea_n_objectives` is saved in adapter_config.json; plain PEFT ignores it with a warning.
    """

    panacea_n_objectives: int = field(default=2, metadata={"help": "K: preference slots in the diagonal"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.panacea_n_objectives < 1:
            raise ValueError(f"panacea_n_objectives must be >= 1, got {self.panacea_n_objectives}")
        if self.r <= self.panacea_n_objectives:
            raise ValueError(f"r={self.r} must exceed panacea_n_objectives={self.panacea_n_objectives}")
        if self.use_dora or self.lora_bias or self.use_rslora or self.rank_pattern or self.alpha_pattern:
            raise ValueError("Panacea SVD-LoRA supports no DoRA, lora_bias, rsLoRA or rank/alpha patterns")
        self._register_custom_module({nn.Linear: PanaceaLinear})


def panacea_lora_config(n_objectives: int, rank: int, alpha: float, target_modules: Sequence[str],
                        dropout: float = 0.0) -> PanaceaLoraConfig:
    """r = rank + n_objectives; `rank` (k) is the number of learned singular values σ."""
    if rank < 1:
        raise ValueError(f"rank (the number of learned singular values) must be >= 1, got {rank}")
    if n_objectives < 1:
        raise ValueError(f"n_objectives must be >= 1, got {n_objectives}")
    return PanaceaLoraConfig(
        r=rank + n_objectives, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout,
        bias="none", task_type="CAUSAL_LM", panacea_n_objectives=n_objectives,
    )


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
