"""The per-weight baseline: one LoRA-DPO model per λ of the grid ("discrete policy solutions").

Each model minimises the same λ-aggregated per-objective DPO loss as Panacea, with λ fixed for the whole run.
It is the expensive reference: what the front costs without a conditioned model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from peft import LoraConfig, get_peft_model

from pareto.config import DPOConfig, PerWeightConfig
from pareto.methods import FitContext
from pareto.methods.dpo import LambdaBatches, PairSet, TrainResult, front_validator, train_dpo
from pareto.methods.reference import prepare_reference
from pareto.models.conditioned import PerWeightPolicy, adapter_name
from pareto.models.policy import lora_targets


def lora_policy(ctx: FitContext, cfg: DPOConfig, pairs: PairSet):
    """The base model with one fresh LoRA adapter, and `pairs.ref_logp` filled from the base (adapter off): computed
    by the first model of the run, read from the state's cache by the others."""
    model, tokenizer = ctx.load_base()
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      target_modules=lora_targets(model, cfg.target_modules, cfg.lora_layers),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora, adapter_name=adapter_name(0))
    prepare_reference(model, tokenizer, pairs, ctx.max_length, model.disable_adapter, ctx.cache_dir)
    return model, tokenizer


def fit(ctx: FitContext, cfg: PerWeightConfig, weights: Sequence[float] | None = None
        ) -> tuple[PerWeightPolicy, TrainResult]:
    """Train the one model of λ = `weights`."""
    if weights is None:
        raise ValueError("per_weight_dpo trains one model per λ: pass weights")
    objectives, pairs, max_length = ctx.objectives, ctx.training_pairs(cfg), ctx.max_length
    lam = np.asarray(weights, dtype=np.float64)
    model, tokenizer = lora_policy(ctx, cfg, pairs)
    policy = PerWeightPolicy(model, tokenizer, objectives, {adapter_name(0): lam})
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts, lam[None, :],
                               ctx.reward, cfg.max_repetition)
    batches = LambdaBatches(pairs.better, cfg.batch_size, 0.0, fixed=lam) if cfg.batch_by_lambda else None
    result = train_dpo(
        model, tokenizer, pairs, cfg, objectives=objectives, sample_weights=lambda rng: lam,
        apply_weights=lambda w: None, validate=validate, max_length=max_length, seed=ctx.seed,
        desc=f"per-weight λ={np.round(lam, 2).tolist()}", checkpoints=ctx.checkpoints(cfg),
        sample_batch=batches.sample_batch if batches else None,
    )
    return policy, result
