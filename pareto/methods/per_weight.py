"""The per-weight baseline: one LoRA-DPO model per λ of the grid ("discrete policy solutions").

Each model minimises the same λ-aggregated per-objective DPO loss as Panacea, with λ fixed for the whole run.
It is the expensive reference: what the front costs without a conditioned model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peft import LoraConfig, PeftModel, get_peft_model

from pareto.config import PerWeightConfig
from pareto.methods import FitContext
from pareto.methods.dpo import TrainResult, front_validator, reference_logps, train_dpo
from pareto.models.policy import generate, load_policy


def adapter_name(index: int) -> str:
    return f"w{index}"


class PerWeightPolicy:
    """A set of adapters on one base model; λ picks the trained adapter nearest to it."""

    def __init__(self, model: PeftModel, tokenizer, objectives: Sequence[str], weights: dict[str, np.ndarray]):
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)
        self.weights = weights  # adapter name -> its λ

    def nearest(self, weights: np.ndarray) -> str:
        return min(self.weights, key=lambda name: float(np.abs(self.weights[name] - weights).sum()))

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        weights = np.asarray(weights, dtype=np.float64)
        rows = np.tile(weights, (len(prompts), 1)) if weights.ndim == 1 else weights
        names = [self.nearest(w) for w in rows]
        out: list[str] = [""] * len(prompts)
        for name in dict.fromkeys(names):  # one generate call per adapter, in first-seen order
            idx = [i for i, n in enumerate(names) if n == name]
            self.model.set_adapter(name)
            for i, text in zip(idx, generate(self.model, self.tokenizer, [prompts[i] for i in idx], **gen),
                               strict=True):
                out[i] = text
        return out

    def save(self, path: str | Path) -> None:
        for name in self.weights:
            self.model.save_pretrained(Path(path), selected_adapters=[name])

    @classmethod
    def load(cls, base_dir: str | Path, adapters: dict[str, tuple[Sequence[float], str | Path]],
             objectives: Sequence[str]) -> PerWeightPolicy:
        base, tokenizer = load_policy(base_dir)
        model = None
        for name, (_, path) in adapters.items():
            if model is None:
                model = PeftModel.from_pretrained(base, str(path), adapter_name=name)
            else:
                model.load_adapter(str(path), adapter_name=name)
        model.eval()
        return cls(model, tokenizer, objectives, {n: np.asarray(w, dtype=np.float64) for n, (w, _) in adapters.items()})


def fit(ctx: FitContext, cfg: PerWeightConfig, weights: Sequence[float] | None = None
        ) -> tuple[PerWeightPolicy, TrainResult]:
    """Train the one model of λ = `weights`."""
    if weights is None:
        raise ValueError("per_weight_dpo trains one model per λ: pass weights")
    objectives, pairs, max_length = ctx.objectives, ctx.pairs, ctx.max_length
    lam = np.asarray(weights, dtype=np.float64)
    model, tokenizer = load_policy(ctx.base_dir)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora, adapter_name=adapter_name(0))
    with model.disable_adapter():
        pairs.ref_logp = reference_logps(model, tokenizer, pairs, max_length)
    policy = PerWeightPolicy(model, tokenizer, objectives, {adapter_name(0): lam})
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts, lam[None, :],
                               ctx.reward, cfg.max_repetition)
    result = train_dpo(
        model, tokenizer, pairs, cfg, objectives=objectives, sample_weights=lambda rng: lam,
        apply_weights=lambda w: None, validate=validate, aggregation="linear", max_length=max_length, seed=ctx.seed,
        desc=f"per-weight λ={np.round(lam, 2).tolist()}",
    )
    return policy, result
