"""PPO math on token tensors, shared by every RL method (pure torch; tested against hand-computed cases).

Layout: per-token quantities are `[B, T]` (or `[B, T, H]` with H value heads) in the *shifted* sequence layout
(position t scores the token at t+1); `mask` is 1 on response tokens. The reward stays a vector until
`combine_objectives`, which scalarizes it by λ at the advantage step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pareto.objectives.base import RunningZScore
from pareto.objectives.scalarize import scalarize


def masked_mean(x: torch.Tensor, mask: torch.Tensor, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """Σ x·mask / Σ mask (or / denom: a global token count keeps DDP shards exact, see `clipped_policy_loss`)."""
    mask = mask.to(x.dtype)
    if x.dim() > mask.dim():  # [B, T, H] against a [B, T] mask: mean per head
        mask = mask.unsqueeze(-1)
        total = (x * mask).sum(dim=tuple(range(mask.dim() - 1)))
        count = mask.sum() if denom is None else torch.as_tensor(denom, dtype=x.dtype)
        return total / torch.clamp(count, min=1.0)
    count = mask.sum() if denom is None else torch.as_tensor(denom, dtype=x.dtype)
    return (x * mask).sum() / torch.clamp(count, min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries (unbiased variance); masked-out entries come back as 0."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / torch.clamp(n - 1, min=1.0)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def whiten_rewards(rewards: torch.Tensor, stats: RunningZScore, update: bool = True) -> torch.Tensor:
    """Per-objective whitening of a reward vector [B, K] with running stats (each column on its own scale).

    The batch first updates the running mean/std (Welford), then every column is z-scored by its own stats,
    so λ weighs preferences, not the objectives' units. A column's result never depends on another column.
    """
    if update:
        stats.update(rewards)
    return stats(rewards.double()).to(rewards.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token per row [B] (rows are right-padded, the response contiguous)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values


def token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence scores [B] or [B, H] placed on each row's last response token -> [B, T] or [B, T, H]."""
    b, t = mask.shape
    last = last_token_index(mask)
    out = scores.new_zeros((b, t) + tuple(scores.shape[1:]))
    out[torch.arange(b), last] = scores
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens of each row.

    rewards, values: [B, T] or [B, T, H] (one column per value head); mask [B, T].
    δ_t = r_t + γ V_{t+1} − V_t (V = 0 after the last response token); A_t = δ_t + γλ A_{t+1}.
    Returns (advantages, returns = advantages + values), both 0 outside the mask.
    """
    m = mask.to(values.dtype)
    if values.dim() == 3:
        m = m.unsqueeze(-1)
    t_len = values.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(t_len)):
        next_mask = m[:, t + 1] if t + 1 < t_len else torch.zeros_like(m[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < t_len else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_mask * running
        advantages[:, t] = running
    advantages = advantages * m
    return advantages, (advantages + values) * m


def combine_objectives(rewards: torch.Tensor, weights: torch.Tensor, scalarizer: str = "linear",
                       ideal: float = 0.0) -> torch.Tensor:
    """Scalarize whitened reward vectors [B, K] by per-row λ [B, K] (the only place the vector becomes one number).

    tchebycheff uses the ideal point z = `ideal` in every objective (whitened units: a point above what the
    policy reaches), log_sigmoid uses the running mean (0 after whitening) as its reference.
    """
    if scalarizer == "tchebycheff":
        return scalarize("tchebycheff", rewards, weights, ideal=torch.full_like(rewards, ideal))
    return scalarize(scalarizer, rewards, weights)


def group_advantages(rewards: torch.Tensor, weights: torch.Tensor, scalarizer: str = "linear",
                     normalize: str = "per_objective", eps: float = 1e-6, ideal: float = 0.0) -> torch.Tensor:
    """GRPO advantages [B, G] from vector rewards [B, G, K] (G samples per prompt) and one λ per group [B, K].

    `per_objective` (GDPO-style): standardise each objective within its group (mean 0, unit std over the G samples),
    then scalarise by λ, so an objective on a larger scale cannot drown the others. `sum`: scalarise the raw vectors
    first, then standardise the scalar within the group (plain GRPO on the λ-weighted reward). A group whose G
    rewards are all equal gets zero advantage either way: it says nothing about which sample was better.
    `ideal`: the Tchebycheff ideal point (in the units being scalarised), as in `combine_objectives`.
    """
    if rewards.dim() != 3 or weights.shape != (rewards.shape[0], rewards.shape[2]):
        raise ValueError(f"rewards must be [B, G, K] and weights [B, K]; got {tuple(rewards.shape)} and "
                         f"{tuple(weights.shape)}")
    if normalize not in ("per_objective", "sum"):
        raise ValueError(f"normalize must be 'per_objective' or 'sum', got {normalize!r}")

    def standardise(x: torch.Tensor) -> torch.Tensor:  # over the group (dim 1); one sample: no spread, zero
        if x.shape[1] < 2:
            return torch.zeros_like(x)
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + eps)

    lam = weights.unsqueeze(1).expand(-1, rewards.shape[1], -1)
    if normalize == "per_objective":
        scalar = combine_objectives(standardise(rewards), lam, scalarizer, ideal)
        # a non-linear scalarization of zero-mean objectives is not zero-mean: keep the group mean the baseline
        return scalar if scalarizer == "linear" else scalar - scalar.mean(1, keepdim=True)
    return standardise(combine_objectives(rewards, lam, scalarizer, ideal))


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_range: float, denom: float | torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean over tokens of −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = exp(logp − old_logp).

    `denom` replaces the local token count, so shards of one batch on several ranks sum to the loss of the whole
    batch (pass global_tokens / world_size: DDP averages gradients over ranks).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, denom)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return loss, stats


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, coef: torch.Tensor,
               denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """GRPO's KL loss term: mean over tokens of β_row · k3, k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0, an unbiased
    estimator of KL(π_θ ‖ π_ref) on tokens sampled from π_θ (Schulman's k3; DeepSeekMath). `coef`: β per row [B]."""
    diff = ref_logp - logp
    k3 = torch.exp(diff) - diff - 1.0
    return masked_mean(coef.to(k3.dtype)[:, None] * k3, mask, denom)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float | None = None, denom: float | torch.Tensor | None = None) -> torch.Tensor:
    """½ max((V − R)², (clip(V, V_old ± ε) − R)²), averaged over tokens and summed over value heads."""
    loss = (values - returns) ** 2
    if clip_range is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    per_head = masked_mean(0.5 * loss, mask, denom)
    return per_head.sum()


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s adaptive KL coefficient: β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon).

    target None keeps β fixed.
    """

    coef: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * n_steps / self.horizon
        return self.coef

    def state_dict(self) -> dict:
        return {"coef": self.coef, "target": self.target, "horizon": self.horizon}

    @classmethod
    def from_state_dict(cls, state: dict) -> AdaptiveKLController:
        return cls(float(state["coef"]), state["target"], int(state["horizon"]))
