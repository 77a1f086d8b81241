"""MODPO (Zhou et al., Findings ACL 2024): DPO on one objective's labels with a margin from the others' rewards.

For λ = w and the objective k whose preference labels are trained on (default: the largest weight of w),

    ρ_θ(x, y) = (β·log π_θ(y|x)/π_ref(y|x) − m(x, y)) / w_k,    m = scalarize(r_{−k}(x, y), w_{−k})
    L = −E log σ(ρ_θ(x, y_w) − ρ_θ(x, y_l))

whose optimum is the MORLHF policy π ∝ π_ref·exp(w·r/β), without RL. The margin rewards r_{−k} come from the
learned vector reward (the reference code uses other DPO adapters' implicit rewards; any reward model works);
`scalarizer: log_sigmoid` uses Σ w_i log σ(r_i) instead of the linear sum. One LoRA model per λ, the second
per-weight baseline next to linear-scalarized DPO. At a vertex the margin vanishes and MODPO is plain DPO.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pareto.config import MODPOConfig
from pareto.methods import FitContext, pair_rewards
from pareto.methods.dpo import PairSet, TrainResult, front_validator, train_dpo
from pareto.methods.per_weight import lora_policy
from pareto.models.conditioned import PerWeightPolicy, adapter_name
from pareto.objectives.losses import modpo_offset


def trained_objective(weights: np.ndarray, objectives: Sequence[str], preference_objective: str | None) -> int:
    """Index of the objective whose labels MODPO trains on at λ = `weights`."""
    if preference_objective is not None:
        k = objectives.index(preference_objective)
        if weights[k] <= 0:
            raise ValueError(f"methods.modpo.preference_objective {preference_objective!r} has weight 0 at "
                             f"λ={weights.tolist()}; leave it null to use each λ's largest weight")
        return k
    return int(np.argmax(weights))


def margin_pairs(pairs: PairSet, rewards: torch.Tensor, weights: np.ndarray, objective: int,
                 scalarizer: str) -> PairSet:
    """The pairs with MODPO's offsets for objective `objective` (0 for the other, unweighted, objectives)."""
    lam = torch.as_tensor(weights, dtype=torch.float32)
    offset = torch.zeros(len(pairs), len(weights))
    offset[:, objective] = modpo_offset(rewards, lam, objective, scalarizer)
    return PairSet(pairs.prompts, pairs.responses, pairs.better, pairs.ref_logp, offset)


def fit(ctx: FitContext, cfg: MODPOConfig, weights: Sequence[float] | None = None
        ) -> tuple[PerWeightPolicy, TrainResult]:
    """Train the one MODPO model of λ = `weights`."""
    if weights is None:
        raise ValueError("modpo trains one model per λ: pass weights")
    objectives, max_length = ctx.objectives, ctx.max_length
    lam = np.asarray(weights, dtype=np.float64)
    k = trained_objective(lam, list(objectives), cfg.preference_objective)
    pairs = ctx.pairs
    if cfg.margin_pairs is not None and len(pairs) > cfg.margin_pairs:
        # scoring every pair with the reward model costs more than training on tiny-hh: use a seeded subset
        keep = np.random.default_rng(ctx.seed).choice(len(pairs), size=cfg.margin_pairs, replace=False)
        pairs = pairs.subset(np.sort(keep))
    rewards = pair_rewards(ctx.reward, pairs)
    model, tokenizer = lora_policy(ctx, cfg, pairs)
    train_pairs = margin_pairs(pairs, rewards, lam, k, cfg.scalarizer)
    policy = PerWeightPolicy(model, tokenizer, objectives, {adapter_name(0): lam})
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts, lam[None, :],
                               ctx.reward, cfg.max_repetition)
    vertex = np.eye(len(objectives))[k]
    result = train_dpo(
        model, tokenizer, train_pairs, cfg.model_copy(update={"beta": cfg.beta / lam[k]}),  # ρ's 1/w_k scaling
        objectives=objectives, sample_weights=lambda rng: vertex, apply_weights=lambda w: None, validate=validate,
        max_length=max_length, seed=ctx.seed,
        desc=f"modpo λ={np.round(lam, 2).tolist()} on {objectives[k]}", checkpoints=ctx.checkpoints(cfg),
    )
    result.history.append({"step": result.steps, "trained_objective": float(k)})
    return policy, result
