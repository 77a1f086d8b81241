"""MAH-DPO's multi-head LM: a shared backbone and one output head per objective, mixed by λ at inference.

Each head is a low-rank delta on the shared LM head (W_h = W + s·B_h A_h) instead of a full V×d copy, so

    logits(λ) = W h + s · Σ_h w̄_h B_h A_h h

With `mix="mean"` (w̄ = λ / Σλ, the paper's EnsembleHead) that is Σ_h w̄_h logits_h, the product of experts
π ∝ Π_h π_h^{w̄_h}: at λ = (½, ½) each objective gets half its head's delta. With `mix="max"` (w̄ = λ / max λ) the
leading objective keeps its whole delta and the others add theirs in proportion (at the centre, every delta whole):
the interior of the front is no longer a dilution of its vertices (docs/fronts.md, MAH-DPO); `power` p < 1 takes
w̄ = (λ / max λ)^p, lifting the other objectives' deltas toward whole.

With `head_layers` N, each head also owns such a delta on every targeted linear layer of the top N decoder layers
(those leave the shared backbone): a head is then the top of the network, as in the MAH-DPO paper's figure, and at
inference those layers' deltas are mixed by λ the same way (there the mix is of weights, not of logits). λ is [K]
(one preference for the batch) or [B, K] (one per row, e.g. a one-hot row per training example routes it to its
objective's head; other heads get exactly zero gradient).

λ is never stored on the model. It lives in a `contextvars.ContextVar` set by `head_weights(λ)` for the duration of
a call, so requests with different λ can share one loaded model from several threads (each thread has its own
context) and the shared modules are never mutated by inference. Heads start at B_h = 0: the untouched model is
exactly the SFT reference, so DPO logits are 0 at step 0.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from pareto.config.methods import HeadMix
from pareto.models.conditioned import POLICY_META, read_policy_meta, write_policy_meta
from pareto.models.policy import generate, load_policy, lora_targets, matches_target

MULTIHEAD_MARKER = "pareto.mah_dpo.multihead.v1"
HEADS_FILE = "heads.safetensors"

_HEAD_WEIGHTS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("pareto_head_weights",
                                                                                    default=None)


HEAD_MIXES = get_args(HeadMix)


def _as_weights(weights: object, n_heads: int, mix: str = "mean", power: float = 1.0) -> torch.Tensor:
    lam = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    if lam.dim() not in (1, 2) or lam.shape[-1] != n_heads:
        raise ValueError(f"head weights have shape {tuple(lam.shape)}; expected [{n_heads}] or [B, {n_heads}]")
    if not torch.isfinite(lam).all() or (lam < 0).any():
        raise ValueError(f"head weights must be finite and non-negative, got {lam.tolist()}")
    total = lam.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError("head weights must not be all zero")
    _check_mix(mix, power)
    return lam / total if mix == "mean" else (lam / lam.amax(-1, keepdim=True)) ** power


def _check_mix(mix: str, power: float) -> None:
    if mix not in HEAD_MIXES:
        raise ValueError(f"head mix {mix!r} is not one of {HEAD_MIXES}")
    if not 0 < power <= 1 or (mix == "mean" and power != 1):
        raise ValueError(f"head mix power {power} must be in (0, 1], and 1 with the mean mix")


@contextmanager
def head_weights(weights: object, n_heads: int | None = None, mix: str = "mean",
                 power: float = 1.0) -> Iterator[torch.Tensor]:
    """Mix the heads by λ ([K] or [B, K]) for every forward pass inside the block, in this thread/context only;
    `mix` normalises λ by its sum (mean) or its largest entry (max, then raised to `power`)."""
    lam = _as_weights(weights, n_heads if n_heads is not None else np.asarray(weights).shape[-1], mix, power)
    token = _HEAD_WEIGHTS.set(lam)
    try:
        yield lam
    finally:
        _HEAD_WEIGHTS.reset(token)


def set_training_routing(weights: object, mix: str = "mean", power: float = 1.0) -> None:
    """Training only: route the next forward passes by λ rows (one-hot objective tags, or a drawn λ mixed as at
    inference) until changed.

    Call it inside a `head_weights(...)` block, whose exit restores the previous value.
    """
    lam = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    _HEAD_WEIGHTS.set(_as_weights(lam, lam.shape[-1], mix, power))


class MultiHeadLinear(nn.Module):
    """A shared linear layer (the LM head, or a top decoder layer's projection) plus K low-rank deltas; reads λ from
    the calling context."""

    def __init__(self, base: nn.Linear, n_heads: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base  # the shared (possibly tied) LM head or projection; frozen
        self.n_heads, self.rank, self.alpha = n_heads, rank, alpha
        self.scaling = alpha / rank
        d, v = base.in_features, base.out_features
        self.head_A = nn.Parameter(torch.empty(n_heads, rank, d))
        self.head_B = nn.Parameter(torch.zeros(n_heads, v, rank))  # zero: every head starts as the shared head
        for h in range(n_heads):  # PEFT's LoRA init for A
            nn.init.kaiming_uniform_(self.head_A.data[h], a=math.sqrt(5))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        lam = _HEAD_WEIGHTS.get()
        if lam is None:
            raise RuntimeError("MultiHeadLinear needs preference weights: wrap the call in "
                               "`with head_weights(λ):` (pareto.models.multihead)")
        lam = lam.to(hidden.dtype).to(hidden.device)
        if lam.dim() == 2 and lam.shape[0] != hidden.shape[0]:
            raise ValueError(f"head weights have {lam.shape[0]} rows but the batch has {hidden.shape[0]}")
        logits = self.base(hidden)
        if lam.dim() == 2 and hidden.dim() == 3 and bool(((lam > 0).sum(-1) == 1).all()):
            # Every row routed to one head (MAH-DPO training): only that head's r-rank delta is computed, per row,
            # instead of all K with zero weights (a third of the V-sized work at K = 3; the other heads' gradients
            # stay exactly zero). The add into the shared logits is fused into the batched matmul.
            heads = lam.argmax(-1)
            z = torch.bmm(hidden, self.head_A[heads].transpose(1, 2)) * self.scaling  # [B, T, r]
            return torch.baddbmm(logits, z, self.head_B[heads].transpose(1, 2))
        # z[..., h, r] = s·λ_h·A_h h: K·r numbers per token; the V-sized product is one matmul over (h, r) with the
        # add into the shared logits fused (addmm), so no [K, B, T, V] logits or scaled [B, T, V] copies are made.
        k, r, d = self.head_A.shape
        z = (hidden.reshape(-1, d) @ self.head_A.reshape(k * r, d).T).view(*hidden.shape[:-1], k, r)
        scale = lam * self.scaling
        z = z * (scale[None, None, :, None] if lam.dim() == 1 else scale[:, None, :, None])
        b = self.head_B.transpose(1, 2).reshape(k * r, -1)  # [K·r, V]
        v = b.shape[1]
        return torch.addmm(logits.reshape(-1, v), z.reshape(-1, k * r), b).view(*logits.shape)

    def single_head_logits(self, hidden: torch.Tensor, head: int) -> torch.Tensor:
        """Head `head` alone: W h + s·B_h A_h h (what a one-hot λ must reproduce)."""
        return self.base(hidden) + self.scaling * (hidden @ self.head_A[head].T) @ self.head_B[head].T


def _lm_owner(model: nn.Module) -> nn.Module:
    """The module that owns `lm_head` (the causal LM under a PEFT wrapper, or the LM itself)."""
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    if not hasattr(inner, "lm_head"):
        raise ValueError(f"{type(inner).__name__} has no lm_head; MAH-DPO needs a causal LM with an output head")
    return inner


def multihead(model: nn.Module) -> MultiHeadLinear:
    head = _lm_owner(model).lm_head
    if not isinstance(head, MultiHeadLinear):
        raise ValueError("model has no multi-head LM head; build it with add_multihead")
    return head


def layer_heads(model: nn.Module) -> dict[str, MultiHeadLinear]:
    """The multi-head projections inside the decoder layers (`head_layers`), by name within the causal LM."""
    owner = _lm_owner(model)
    return {name: m for name, m in owner.named_modules() if isinstance(m, MultiHeadLinear) and name != "lm_head"}


def _wrap_layers(model: nn.Module, names: Sequence[str], n_heads: int, rank: int, alpha: float) -> None:
    for name in names:
        parent, child = name.rsplit(".", 1)
        owner = model.get_submodule(parent)
        linear = getattr(owner, child)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"head layer {name!r} is a {type(linear).__name__}, not nn.Linear")
        setattr(owner, child, MultiHeadLinear(linear, n_heads, rank, alpha))


def add_multihead(model: PreTrainedModel, n_heads: int, head_rank: int, head_alpha: float,
                  backbone: LoraConfig | None, head_layers: int = 0,
                  head_modules: Sequence[str] = ()) -> nn.Module:
    """Freeze the base; give each of the K heads a delta on lm_head and, with `head_layers` N, on the `head_modules`
    projections of the top N decoder layers; add the shared LoRA backbone adapter (if given) on the rest."""
    model.requires_grad_(False)
    wrapped = lora_targets(model, head_modules, head_layers) if head_layers else []
    _wrap_layers(model, wrapped, n_heads, head_rank, head_alpha)
    if backbone is not None and wrapped:  # the heads' projections leave the backbone: name the rest explicitly
        targets = backbone.target_modules
        inside = {f"{n}.base" for n in wrapped}  # the wrapped projections' own linear layers
        rest = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inside
                and matches_target(n, targets)]
        backbone = replace(backbone, target_modules=rest) if rest else None
    if backbone is not None:
        model = get_peft_model(model, backbone)
        for head in layer_heads(model).values():  # PEFT froze every non-LoRA parameter
            head.head_A.requires_grad_(True)
            head.head_B.requires_grad_(True)
    owner = _lm_owner(model)
    owner.lm_head = MultiHeadLinear(owner.lm_head, n_heads, head_rank, head_alpha)
    return model


class MultiHeadPolicy:
    """MAH-DPO at inference: the heads mixed by λ per call (per row for [B, K]), the model never mutated."""

    kind = "mah_dpo"

    def __init__(self, model: nn.Module, tokenizer, objectives: Sequence[str], mix: str = "mean",
                 mix_power: float = 1.0) -> None:
        _check_mix(mix, mix_power)
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)
        self.mix, self.mix_power = mix, mix_power
        self.head = multihead(model)
        if self.head.n_heads != len(self.objectives):
            raise ValueError(f"model has {self.head.n_heads} heads but {len(self.objectives)} objectives")

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        with head_weights(weights, len(self.objectives), self.mix, self.mix_power):
            return generate(self.model, self.tokenizer, list(prompts), **gen)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        has_backbone = isinstance(self.model, PeftModel)
        if has_backbone:
            self.model.save_pretrained(path)
        layers = layer_heads(self.model)
        tensors = {f"{prefix}{part}": getattr(m, part).detach().contiguous()
                   for prefix, m in [("", self.head), *((f"{n}/", m) for n, m in layers.items())]
                   for part in ("head_A", "head_B")}
        save_file(tensors, str(path / HEADS_FILE))
        write_policy_meta(path, MULTIHEAD_MARKER, self.objectives, head_rank=self.head.rank,
                          head_alpha=self.head.alpha, backbone_adapter=has_backbone, head_layers=sorted(layers),
                          head_mix=self.mix, head_mix_power=self.mix_power)

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path, objectives: Sequence[str]) -> MultiHeadPolicy:
        """Load strictly: a missing or mis-shaped head tensor fails loudly (never silently random heads)."""
        adapter_dir = Path(adapter_dir)
        meta = read_policy_meta(adapter_dir, MULTIHEAD_MARKER, objectives, "MAH-DPO")
        base, tokenizer = load_policy(base_dir)
        base.requires_grad_(False)
        rank, alpha = int(meta["head_rank"]), float(meta["head_alpha"])
        _wrap_layers(base, meta.get("head_layers", []), len(objectives), rank, alpha)  # before the backbone, as trained
        model: nn.Module = PeftModel.from_pretrained(base, str(adapter_dir)) if meta["backbone_adapter"] else base
        owner = _lm_owner(model)
        owner.lm_head = MultiHeadLinear(owner.lm_head, len(objectives), rank, alpha)
        state = load_file(str(adapter_dir / HEADS_FILE))
        heads = [("", owner.lm_head), *((f"{n}/", m) for n, m in layer_heads(model).items())]
        expected = {f"{prefix}{part}": getattr(m, part) for prefix, m in heads for part in ("head_A", "head_B")}
        if set(state) != set(expected):
            raise ValueError(f"{adapter_dir / HEADS_FILE}: tensors {sorted(state)}, expected {sorted(expected)}")
        with torch.no_grad():
            for name, param in expected.items():
                if state[name].shape != param.shape:
                    raise ValueError(f"{adapter_dir / HEADS_FILE}: {name} has shape {tuple(state[name].shape)}, "
                                     f"expected {tuple(param.shape)}")
                param.copy_(state[name])
        model.eval()
        try:  # saved before head_mix existed: the mean
            return cls(model, tokenizer, objectives, meta.get("head_mix", "mean"),
                       float(meta.get("head_mix_power", 1.0)))
        except ValueError as err:
            raise ValueError(f"{adapter_dir / POLICY_META}: {err}; re-save the policy or fix head_mix there") from None
