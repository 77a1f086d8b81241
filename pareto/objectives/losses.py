"""Preference losses shared by every method (written once, tested against hand-computed cases)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-example DPO loss: −log σ(β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))])."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def per_objective_dpo_losses(policy_logp: torch.Tensor, ref_logp: torch.Tensor, better: torch.Tensor,
                             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO losses for one pair under K labels (the PKU-SafeRLHF shape: one pair, a label per objective).

    policy_logp, ref_logp: [B, 2] log-probs of (response_0, response_1); better: [B, K] in {0, 1, -1 (tie)}.
    Returns losses [B, K] (0 where the objective has no label) and the label mask [B, K].
    One forward pass over the two responses serves all K objectives: the label only flips the margin's sign.
    """
    mask = (better >= 0).to(policy_logp.dtype)
    sign = torch.where(better == 1, 1.0, -1.0).to(policy_logp.dtype)  # +1: response_1 is chosen
    margin = (policy_logp[:, 1] - ref_logp[:, 1]) - (policy_logp[:, 0] - ref_logp[:, 0])
    losses = -F.logsigmoid(beta * sign * margin.unsqueeze(-1))
    return losses * mask, mask


def masked_objective_means(losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_i = mean over the labelled examples of objective i ([B, K] -> [K]); 0 for an objective with none."""
    return (losses * mask).sum(0) / mask.sum(0).clamp(min=1.0)
