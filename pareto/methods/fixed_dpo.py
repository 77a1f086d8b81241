"""Fixed-λ DPO: one LoRA-DPO model trained at a single preference λ, answering every λ the same way.

The simplest multi-objective baseline (linear scalarization, chosen once): it shows what a front looks like when
the model does not listen to λ, and it is the worked example of docs/adding-a-method.md (a table row in
`pareto.config.methods`, this file, and its policy class below).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from peft import PeftModel

from pareto import adapters
from pareto.config import FixedDPOConfig
from pareto.methods import FitContext
from pareto.methods.dpo import TrainResult, front_validator, train_dpo
from pareto.methods.per_weight import lora_policy
from pareto.models.policy import generate, load_policy


class FixedPolicy:
    """One LoRA model; λ is ignored (the model was trained at one λ)."""

    kind = "fixed_dpo"  # the front's policy_kind: serving loads it through the method table's `policy`

    def __init__(self, model: PeftModel, tokenizer, objectives: Sequence[str]) -> None:
        self.model, self.tokenizer, self.objectives = model, tokenizer, tuple(objectives)

    def generate(self, prompts: Sequence[str], weights: np.ndarray, **gen: object) -> list[str]:
        return generate(self.model, self.tokenizer, list(prompts), **gen)

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(Path(path))

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path, objectives: Sequence[str],
             device: str = "cpu") -> FixedPolicy:
        base, tokenizer = load_policy(base_dir, device=device)
        # saved by PEFT under the adapter's name (lora_policy names it w0)
        model = PeftModel.from_pretrained(base, str(adapters.adapter_dir(Path(adapter_dir))))
        model.eval()
        return cls(model, tokenizer, objectives)


def fit(ctx: FitContext, cfg: FixedDPOConfig, weights: Sequence[float] | None = None
        ) -> tuple[FixedPolicy, TrainResult]:
    """Train one model at `cfg.weights` (default: equal weights); `weights` is unused (one model for every λ)."""
    k = len(ctx.objectives)
    lam = np.asarray(cfg.weights if cfg.weights is not None else [1.0 / k] * k, dtype=np.float64)
    pairs = ctx.training_pairs(cfg)
    model, tokenizer = lora_policy(ctx, cfg, pairs)
    policy = FixedPolicy(model, tokenizer, ctx.objectives)
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts, lam[None, :],
                               ctx.reward, cfg.max_repetition)
    result = train_dpo(
        model, tokenizer, pairs, cfg, objectives=ctx.objectives, sample_weights=lambda rng: lam,
        apply_weights=lambda w: None, validate=validate, max_length=ctx.max_length,
        seed=ctx.seed, desc=f"fixed λ={np.round(lam, 2).tolist()}", checkpoints=ctx.checkpoints(cfg),
    )
    return policy, result
