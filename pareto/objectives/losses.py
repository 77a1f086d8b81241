"""Preference losses shared by every method (written once, tested against hand-computed cases)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pareto.objectives.scalarize import scalarize


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example DPO loss: −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def implicit_reward_margin(policy_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """[B] log-ratio margin of response_1 over response_0, log π/π_ref(y1) − log π/π_ref(y0), from [B, 2] log-probs
    (β times it is DPO's implicit reward difference)."""
    return (policy_logp[:, 1] - ref_logp[:, 1]) - (policy_logp[:, 0] - ref_logp[:, 0])


def per_objective_dpo_losses(policy_logp: torch.Tensor, ref_logp: torch.Tensor, better: torch.Tensor,
                             beta: float, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO losses for one pair under K labels (the PKU-SafeRLHF shape: one pair, a label per objective).

    policy_logp, ref_logp: [B, 2] log-probs of (response_0, response_1); better: [B, K] in {0, 1, -1 (tie)}.
    offset: optional [B] or [B, K] logit offset in the response_1 − response_0 direction, subtracted from
    β·margin before the label's sign (MODPO's reward-model margin; None = plain DPO).
    Returns losses [B, K] (0 where the objective has no label) and the label mask [B, K].
    One forward pass over the two responses serves all K objectives: the label only flips the margin's sign.
    """
    mask = (better >= 0).to(policy_logp.dtype)
    sign = torch.where(better == 1, 1.0, -1.0).to(policy_logp.dtype)  # +1: response_1 is chosen
    logit = beta * implicit_reward_margin(policy_logp, ref_logp).unsqueeze(-1)
    if offset is not None:
        logit = logit - (offset.unsqueeze(-1) if offset.dim() == 1 else offset).to(logit.dtype)
    losses = -F.logsigmoid(sign * logit)
    return losses * mask, mask


def tie_nll(logit: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a Bradley–Terry preference logit to a 50/50 preference, −½ log σ(x) − ½ log σ(−x) − log 2:
    0 at x = 0, ≈ x²/8 near it. The loss of a pair labelled as a tie (the reward model's and DPO's tie terms)."""
    return 0.5 * (F.softplus(logit) + F.softplus(-logit)) - math.log(2.0)


def per_objective_tie_losses(policy_logp: torch.Tensor, ref_logp: torch.Tensor, better: torch.Tensor,
                             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO's tie term: for pairs tied on an objective (label -1 where -1 means a tie, not a missing label), the
    implicit rewards β·log π/π_ref of the two responses are fit to a 50/50 preference, so training on the other
    objectives cannot move the policy between two responses this objective rates the same (harmless on a safe
    prompt: an answer and a refusal). Same inputs as `per_objective_dpo_losses`; returns losses [B, K] (0 where
    not tied) and the tie mask [B, K].
    """
    ties = (better < 0).to(policy_logp.dtype)
    return tie_nll(beta * implicit_reward_margin(policy_logp, ref_logp)).unsqueeze(-1) * ties, ties


def reward_distillation_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, target: torch.Tensor,
                             beta: float) -> torch.Tensor:
    """[B] cross-entropy of DPO's preference σ(β·margin) for response_1 over response_0 to the soft target σ(target)
    (a reward model's logit, e.g. λ·(r(y1) − r(y0))/τ; Fisch et al. 2024, reward-model distillation). Its minimum
    sets β·log π/π_ref(y1) − β·log π/π_ref(y0) = target: the KL-regularised optimum π ∝ π_ref·exp(r/(βτ)) on the
    pairs, with the reward's magnitudes, which binary labels do not carry."""
    logit = beta * implicit_reward_margin(policy_logp, ref_logp)
    return F.binary_cross_entropy_with_logits(logit, torch.sigmoid(target.to(logit.dtype)), reduction="none")


def reward_distillation_losses(policy_logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor,
                               weights: torch.Tensor, beta: float, temperature: float,
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO fit to a vector reward's λ-scalarised preferences. rewards: [B, 2, K] of (response_0, response_1).

    Returns the loss (mean `reward_distillation_loss` to σ(λ·Δr/τ)), the same per objective [K] to σ(Δr_k/τ) (what
    each objective alone would ask, for the logs) and the λ-preferred response's index [B]."""
    gaps = (rewards[:, 1] - rewards[:, 0]).to(policy_logp.dtype) / temperature  # [B, K]
    target = gaps @ weights.to(gaps.dtype)
    loss = reward_distillation_loss(policy_logp, ref_logp, target, beta).mean()
    per_objective = torch.stack([reward_distillation_loss(policy_logp, ref_logp, g, beta) for g in gaps.T], 1)
    return loss, per_objective.mean(0), (target > 0).long()


def modpo_offset(margin_rewards: torch.Tensor, weights: torch.Tensor, objective: int,
                 scalarizer: str = "linear") -> torch.Tensor:
    """MODPO's margin (Zhou et al. 2024) as a `per_objective_dpo_losses` offset for the trained objective k.

    ρ(x, y) = (β·log π/π_ref(y|x) − m(x, y)) / w_k with m = the λ-scalarized rewards of the *other* objectives,
    so the logit difference is (β/w_k)·Δlog-ratio − Δm/w_k: DPO at β/w_k with offset Δm/w_k.
    margin_rewards: [B, 2, K] rewards of (response_0, response_1); returns the offset [B] (response_1 − response_0).
    """
    if scalarizer not in ("linear", "log_sigmoid"):
        raise ValueError(f"MODPO margins are a weighted sum over the other objectives: use scalarizer 'linear' or "
                         f"'log_sigmoid', not {scalarizer!r}")
    w = weights.to(margin_rewards.dtype).clone()
    w_k = float(w[objective])
    if w_k <= 0:
        raise ValueError(f"MODPO trains objective {objective} but its weight is {w_k}; it must be > 0")
    w[objective] = 0.0
    m = scalarize(scalarizer, margin_rewards, w)  # [B, 2]
    return (m[:, 1] - m[:, 0]) / w_k


def masked_objective_means(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_i = mean over the labelled examples of objective i ([B, K] -> [K]); 0 for an objective with none."""
    return (losses * mask).sum(0) / mask.sum(0).clamp(min=1.0)
