"""Panacea's SVD-LoRA as a PEFT custom LoRA layer.

Per adapted linear layer (Zhong et al., NeurIPS 2024):

    W(λ) = W0 + B · diag(σ_1..σ_k, s·λ_1..s·λ_K) · A · scaling,      A = Vᵀ (r×in), B = U (out×r), r = k + K

A, B, σ (k values) and s (one scalar per layer) are trained; λ is a non-persistent buffer written by
`set_preference`, so it never gets a gradient and is never saved. σ = s = 0 at init, so a fresh adapter is
exactly the base model and only σ and s get gradient on the first step.

λ is either a vector [K] (one preference for the whole batch) or a matrix [B, K] (one per batch row: the
diagonal broadcasts as [B, 1, r] against the [B, T, r] activations, so one `generate` call, KV cache included,
serves a different λ per row).

PEFT quirks handled here and in `pareto.models.svd_lora` (the model-level API) (PEFT 0.21.2):
* custom layers go through the experimental `LoraConfig._register_custom_module`; the registration lives on
  the config object only, so a plain `PeftModel.from_pretrained` of a Panacea directory silently builds plain
  LoRA layers and drops σ and s. `PanaceaLoraConfig` registers itself on construction, `load_panacea` checks
  a marker in meta.json and verifies the loaded layers afterwards;
* only `nn.Linear` is mapped: a target that is not an `nn.Linear` (e.g. GPT-2's Conv1D) would fall through to
  plain LoRA, so `add_panacea_adapter` verifies every adapted module;
* merged weights hold the delta at one λ, so `set_preference` refuses merged layers (unmerge, set, merge).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from peft import LoraConfig
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import VARIANT_KWARG_KEYS
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.utils.other import transpose
from torch import nn

from pareto.front.grid import validate_weights

INIT_STD = 0.02  # U, V ~ N(0, 0.02²) as in the paper's re-implementations

PreferenceLike = torch.Tensor | Sequence[float] | Sequence[Sequence[float]] | np.ndarray


# ---- preference validation ---------------------------------------------------------------------------------
def validate_preference(weights: PreferenceLike, n_objectives: int) -> torch.Tensor:
    """λ as a float32 CPU tensor of shape [K] or [B, K]; ValueError naming the problem otherwise. Each row must be
    on the simplex by the project's one check (`pareto.front.grid.validate_weights`, one tolerance)."""
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
    rows = lam.reshape(-1, n_objectives).numpy()
    for i, row in enumerate(rows):
        try:
            validate_weights(row, n_objectives)
        except ValueError as err:
            raise ValueError(f"preference {err}" + (f" (row {i})" if lam.dim() == 2 else "")) from None
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
