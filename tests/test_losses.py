"""DPO and scalarizer math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pareto.objectives import aggregate_losses, scalarize
from pareto.objectives.losses import (
    dpo_loss,
    masked_objective_means,
    per_objective_dpo_losses,
    per_objective_tie_losses,
    reward_distillation_losses,
    tie_nll,
)


def _nls(x: float) -> float:  # -log sigmoid(x) by hand
    return math.log(1 + math.exp(-x))


def test_dpo_loss_hand_computed() -> None:
    # policy: chosen -10, rejected -12; reference: chosen -11, rejected -11.5 -> margin = 1 - (-0.5) = 1.5
    loss = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.5]), 0.5)
    assert loss.item() == pytest.approx(_nls(0.75), abs=1e-6)


def test_dpo_loss_at_reference_is_log2() -> None:
    x = torch.tensor([-3.0, -7.0])
    assert torch.allclose(dpo_loss(x, x + 1, x, x + 1, 0.3), torch.full((2,), math.log(2.0)))


def test_per_objective_labels_flip_the_margin_and_ties_are_masked() -> None:
    policy = torch.tensor([[-10.0, -12.0]])   # (response_0, response_1)
    ref = torch.tensor([[-11.0, -11.5]])
    better = torch.tensor([[0, 1, -1]])       # objective 0 prefers r0, objective 1 prefers r1, objective 2 tie
    losses, mask = per_objective_dpo_losses(policy, ref, better, beta=0.5)
    # margin for r1 over r0: (-12 + 11.5) - (-10 + 11) = -1.5
    assert losses[0, 0].item() == pytest.approx(_nls(0.75), abs=1e-6)
    assert losses[0, 1].item() == pytest.approx(_nls(-0.75), abs=1e-6)
    assert losses[0, 2].item() == 0.0 and mask.tolist() == [[1.0, 1.0, 0.0]]
    # the standard form agrees with the vectorised one
    std = dpo_loss(policy[:, 1], policy[:, 0], ref[:, 1], ref[:, 0], 0.5)
    assert torch.allclose(losses[:, 1], std)


def test_tie_term_by_hand_and_only_on_ties() -> None:
    policy = torch.tensor([[-10.0, -12.0], [-5.0, -5.0]])
    ref = torch.tensor([[-11.0, -11.5], [-6.0, -6.0]])
    better = torch.tensor([[0, -1], [-1, 1]])
    losses, ties = per_objective_tie_losses(policy, ref, better, beta=0.5)
    assert ties.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    # pair 0: implicit-reward logit β·margin = 0.5 · -1.5; its tie loss is the cross-entropy to 50/50
    x = -0.75
    by_hand = 0.5 * (math.log1p(math.exp(x)) + math.log1p(math.exp(-x))) - math.log(2.0)
    assert losses[0, 1].item() == pytest.approx(by_hand, abs=1e-6) and by_hand > 0
    assert losses[1, 0].item() == pytest.approx(0.0, abs=1e-7)  # both log-ratios moved alike: still indifferent
    assert losses[0, 0].item() == 0.0 and losses[1, 1].item() == 0.0  # labelled entries: the DPO term's job
    assert tie_nll(torch.tensor(2.0)).item() == pytest.approx(tie_nll(torch.tensor(-2.0)).item())  # symmetric


def test_reward_distillation_by_hand() -> None:
    """DPO to a reward model's soft label: σ(β·margin) fit to σ(λ·Δr/τ); the per-objective logs use σ(Δr_k/τ)."""
    policy = torch.tensor([[-10.0, -12.0]])  # log π of (response_0, response_1)
    ref = torch.tensor([[-11.0, -11.5]])     # margin of response_1: (-12 + 11.5) - (-10 + 11) = -1.5
    rewards = torch.tensor([[[0.2, 1.0], [1.0, -1.0]]])  # [B, 2, K]: Δr = (0.8, -2.0)
    lam, beta, tau = torch.tensor([0.75, 0.25]), 0.5, 0.5
    loss, per_objective, chosen = reward_distillation_losses(policy, ref, rewards, lam, beta, tau)

    def ce(logit: float, target_logit: float) -> float:  # -p log σ(x) - (1 - p) log σ(-x), p = σ(target)
        p = 1 / (1 + math.exp(-target_logit))
        return p * _nls(logit) + (1 - p) * _nls(-logit)

    # λ·Δr/τ = (0.75·0.8 − 0.25·2.0) / 0.5 = 0.2; β·margin = −0.75
    assert loss.item() == pytest.approx(ce(-0.75, 0.2), abs=1e-6)
    assert per_objective.tolist() == pytest.approx([ce(-0.75, 1.6), ce(-0.75, -4.0)], abs=1e-6)
    assert chosen.tolist() == [1]  # λ prefers response_1 (0.2 > 0)
    # at its minimum the implicit reward margin equals the target: zero gradient there
    logit = torch.tensor([[0.0, 0.4]], requires_grad=True)  # β·margin = 0.5·0.4 = 0.2 with a zero reference
    reward_distillation_losses(logit, torch.zeros(1, 2), rewards, lam, beta, tau)[0].backward()
    assert logit.grad.abs().max().item() < 1e-6


def test_masked_means_ignore_unlabelled_examples() -> None:
    losses = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_objective_means(losses, mask).tolist() == [2.0, 2.0]


def test_aggregations() -> None:
    losses, lam = torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0.5, 0.25, 0.25])
    assert aggregate_losses(losses, lam, "linear").item() == pytest.approx(0.1 + 0.225 + 0.1)
    assert aggregate_losses(losses, lam, "tchebycheff").item() == pytest.approx(0.225)
    # smooth Tchebycheff by hand: μ log Σ exp(λ_i L_i / μ) with λL = (0.1, 0.225, 0.1), μ = 0.1
    by_hand = 0.1 * math.log(2 * math.exp(1.0) + math.exp(2.25))
    assert aggregate_losses(losses, lam, "smooth_tchebycheff", mu=0.1).item() == pytest.approx(by_hand)
    assert aggregate_losses(losses, lam, "smooth_tchebycheff", mu=1e-3).item() == pytest.approx(0.225, abs=1e-6)
    # every objective gets a gradient, the worst one the most; Tchebycheff gives the others none
    soft = losses.clone().requires_grad_(True)
    aggregate_losses(soft, lam, "smooth_tchebycheff", mu=0.1).backward()
    assert (soft.grad > 0).all() and soft.grad.argmax().item() == 1
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_losses(losses, lam, "median")


def test_reward_scalarizers() -> None:
    r, lam = torch.tensor([1.0, -2.0]), torch.tensor([0.75, 0.25])
    assert scalarize("linear", r, lam).item() == pytest.approx(0.25)
    assert scalarize("tchebycheff", r, lam).item() == pytest.approx(-0.5)
    expected = 0.75 * math.log(1 / (1 + math.exp(-1))) + 0.25 * math.log(1 / (1 + math.exp(2)))
    assert scalarize("log_sigmoid", r, lam).item() == pytest.approx(expected, abs=1e-6)
