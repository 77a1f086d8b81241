"""Rewarded Soups (Ramé et al., NeurIPS 2023): one adapter per objective, interpolated by λ at inference.

All K LoRA adapters live on one base model and are trained one after the other in this task, each with the
shared DPO loop at its own vertex (DPO on that objective's labels + the NLL term, early-stopped on that
objective's held-out reward). Any λ is then served by merging them (`SoupsPolicy`, delta space by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from peft import LoraConfig, get_peft_model

from pareto.config import SoupsConfig
from pareto.methods import FitContext
from pareto.methods.dpo import TrainResult, front_validator, train_dpo
from pareto.methods.reference import prepare_reference
from pareto.models.policy import generate, lora_targets
from pareto.models.soups import SoupsPolicy, objective_adapter


def fit(ctx: FitContext, cfg: SoupsConfig, weights: Sequence[float] | None = None
        ) -> tuple[SoupsPolicy, TrainResult]:
    """Train the K per-objective adapters (`weights` is unused: the soup serves every λ)."""
    objectives, pairs, max_length = ctx.objectives, ctx.training_pairs(cfg), ctx.max_length
    k = len(objectives)
    base, tokenizer = ctx.load_base()
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      target_modules=lora_targets(base, cfg.target_modules, cfg.lora_layers),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    names = [objective_adapter(o) for o in objectives]
    model = get_peft_model(base, lora, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora)
    prepare_reference(model, tokenizer, pairs, max_length, model.disable_adapter)
    total = TrainResult(models=k)
    for i, (objective, name) in enumerate(zip(objectives, names, strict=True)):
        model.set_adapter(name)  # PEFT: the active adapter is trainable, the others frozen
        vertex = np.eye(k)[i]
        validate = front_validator(lambda p, w: generate(model, tokenizer, p, **ctx.gen), ctx.val_prompts,
                                   vertex[None, :], ctx.reward, cfg.max_repetition)
        result = train_dpo(model, tokenizer, pairs, cfg, objectives=objectives, sample_weights=lambda rng, v=vertex: v,
                           apply_weights=lambda w: None, validate=validate,
                           max_length=max_length, seed=ctx.seed + i, desc=f"soups {objective}",
                           checkpoints=ctx.checkpoints(cfg, name))
        # one history, steps continued across adapters; keys say which adapter a value belongs to
        offset = total.steps
        total.history += [{"step": offset + row["step"], **{f"{objective}/{key}": v for key, v in row.items()
                                                             if key != "step"}} for row in result.history]
        total.steps += result.steps
        total.seconds += result.seconds
        total.cpu_seconds += result.cpu_seconds
        total.tokens += result.tokens
        total.resumed_from = max(total.resumed_from, result.resumed_from)
        total.history.append({"step": total.steps, f"best_step/{objective}": float(result.best_step),
                              f"best_val_metric/{objective}": result.best_metric})
    model.eval()
    return SoupsPolicy(model, tokenizer, objectives, merge=cfg.merge), total
