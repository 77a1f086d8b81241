"""Panacea (Zhong et al., NeurIPS 2024) trained with per-objective DPO.

One SVD-LoRA model for every preference: λ is written into the singular values of each adapted layer,
W(λ) = W0 + U·diag(σ ⊕ s·λ)·Vᵀ. Training samples λ per micro-batch (Dirichlet(1) mixed with simplex
vertices) and minimises an aggregate (LS or Tchebycheff) of the per-objective DPO losses. Switching λ at
inference writes K numbers per layer: no reload, no merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import combinations

import numpy as np

from pareto.config import PanaceaConfig
from pareto.front.grid import sample_preferences
from pareto.methods import FitContext
from pareto.methods.dpo import LambdaBatches, TrainResult, front_validator, train_dpo
from pareto.methods.reference import prepare_reference
from pareto.models.conditioned import PanaceaPolicy
from pareto.models.policy import lora_targets
from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, set_preference
from pareto.objectives import aggregate_losses


def validation_weights(k: int, edges: bool = False) -> np.ndarray:
    """The K vertices and the centre of the simplex: cheap, and they span the front; with `edges`, also every edge's
    midpoint (vertices, midpoints, centre: 7 λ for 3 objectives), where two objectives must combine."""
    eye = np.eye(k)
    midpoints = [(eye[i] + eye[j]) / 2 for i, j in combinations(range(k), 2)] if edges and k > 2 else []
    return np.vstack([eye, *midpoints, np.full((1, k), 1.0 / k)])  # (for 2 objectives the midpoint is the centre)


def fit(ctx: FitContext, cfg: PanaceaConfig,
        weights: Sequence[float] | None = None) -> tuple[PanaceaPolicy, TrainResult]:
    """Train one model for every λ (`weights` is unused: Panacea is conditioned, not per-weight)."""
    objectives, pairs, max_length = ctx.objectives, ctx.training_pairs(cfg), ctx.max_length
    k = len(objectives)
    model, tokenizer = ctx.load_base()
    model = add_panacea_adapter(model, panacea_lora_config(k, cfg.lora_rank, cfg.lora_alpha,
                                                    lora_targets(model, cfg.target_modules, cfg.lora_layers)))
    prepare_reference(model, tokenizer, pairs, max_length, model.disable_adapter)
    policy = PanaceaPolicy(model, tokenizer, objectives)
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts,
                               validation_weights(k), ctx.reward, cfg.max_repetition)
    batches = LambdaBatches(pairs.better, cfg.batch_size, cfg.vertex_prob) if cfg.batch_by_lambda else None
    result = train_dpo(
        model, tokenizer, pairs, cfg, objectives=objectives,
        sample_weights=batches.sample_weights if batches else (
            lambda rng: sample_preferences(rng, k, 1, cfg.vertex_prob)[0]),
        apply_weights=lambda w: set_preference(model, w), validate=validate,
        aggregate=partial(aggregate_losses, method=cfg.aggregation, mu=cfg.smooth_mu),
        max_length=max_length, seed=ctx.seed, desc="panacea",
        checkpoints=ctx.checkpoints(cfg), sample_batch=batches.sample_batch if batches else None,
    )
    return policy, result
