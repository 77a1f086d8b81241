"""MODPO: the margin loss on hand-computed cases, its reduction to DPO at a vertex, the trained objective, fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pareto.config import ConfigError, MODPOConfig, config_from_dict, load_config
from pareto.methods import load_method, pair_rewards
from pareto.methods.modpo import margin_pairs, trained_objective
from pareto.models.conditioned import PerWeightPolicy
from pareto.objectives.losses import dpo_loss, modpo_offset, per_objective_dpo_losses
from tests.conftest import ROOT


def nls(x: float) -> float:  # −log σ(x)
    return math.log1p(math.exp(-x))


def log_sigmoid(x: float) -> float:
    return -nls(x)


# one pair: policy and reference log-probs of (response_0, response_1), rewards [2 responses, 3 objectives]
POLICY = torch.tensor([[-10.0, -12.0]])
REF = torch.tensor([[-11.0, -11.5]])
REWARDS = torch.tensor([[[0.0, 1.0, -0.5], [0.0, -1.0, 0.5]]])


def test_modpo_loss_hand_computed() -> None:
    """λ = (0.5, 0.3, 0.2), trained on objective 0 whose label prefers response_0, β = 0.5.

    ρ(y) = (β·log π/π_ref(y) − (0.3·r_1(y) + 0.2·r_2(y))) / 0.5
    ρ(y_0) = (0.5·1 − (0.3 − 0.1)) / 0.5 = 0.6;  ρ(y_1) = (0.5·(−0.5) − (−0.3 + 0.1)) / 0.5 = −0.1
    L = −log σ(ρ(y_w) − ρ(y_l)) = −log σ(0.7)
    """
    lam = torch.tensor([0.5, 0.3, 0.2])
    offset = modpo_offset(REWARDS, lam, 0)
    assert offset.tolist() == pytest.approx([(-0.3 + 0.1 - (0.3 - 0.1)) / 0.5])
    better = torch.tensor([[0]])  # objective 0 prefers response_0
    losses, _ = per_objective_dpo_losses(POLICY, REF, better, beta=0.5 / 0.5, offset=offset)
    assert losses.item() == pytest.approx(nls(0.7), abs=1e-6)


def test_log_sigmoid_margin_hand_computed() -> None:
    """The "Transforming and Combining Rewards" margin: m(y) = Σ_{i≠k} w_i log σ(r_i(y))."""
    lam = torch.tensor([0.5, 0.3, 0.2])
    m0 = 0.3 * log_sigmoid(1.0) + 0.2 * log_sigmoid(-0.5)
    m1 = 0.3 * log_sigmoid(-1.0) + 0.2 * log_sigmoid(0.5)
    offset = modpo_offset(REWARDS, lam, 0, "log_sigmoid")
    assert offset.item() == pytest.approx((m1 - m0) / 0.5, abs=1e-6)
    losses, _ = per_objective_dpo_losses(POLICY, REF, torch.tensor([[0]]), beta=1.0, offset=offset)
    rho0 = (0.5 * 1.0 - m0) / 0.5
    rho1 = (0.5 * -0.5 - m1) / 0.5
    assert losses.item() == pytest.approx(nls(rho0 - rho1), abs=1e-6)
    with pytest.raises(ValueError, match="linear"):
        modpo_offset(REWARDS, lam, 0, "tchebycheff")


def test_at_a_vertex_modpo_is_plain_dpo() -> None:
    offset = modpo_offset(REWARDS, torch.tensor([0.0, 1.0, 0.0]), 1)
    assert offset.tolist() == [0.0]
    losses, _ = per_objective_dpo_losses(POLICY, REF, torch.tensor([[1]]), beta=0.5, offset=offset)
    assert losses.item() == pytest.approx(dpo_loss(POLICY[:, 1], POLICY[:, 0], REF[:, 1], REF[:, 0], 0.5).item())


def test_trained_objective() -> None:
    names = ["helpful", "harmless", "concise"]
    assert trained_objective(np.array([0.2, 0.5, 0.3]), names, None) == 1
    assert trained_objective(np.array([0.2, 0.5, 0.3]), names, "concise") == 2
    with pytest.raises(ValueError, match="weight 0"):
        trained_objective(np.array([0.5, 0.5, 0.0]), names, "concise")
    with pytest.raises(ValueError, match="must be > 0"):
        modpo_offset(REWARDS, torch.tensor([0.0, 1.0, 0.0]), 0)


def test_config_rejects_a_preference_objective_with_zero_weight() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"methods": {"modpo": {"preference_objective": "helpful", "weights": [[0.5, 0.5, 0.0],
                                                                                              [0.0, 1.0, 0.0]]}}})
    message = str(err.value)
    assert "methods.modpo.preference_objective" in message and "\n" not in message
    with pytest.raises(ConfigError, match="methods.modpo.weights.0"):
        config_from_dict({"methods": {"modpo": {"weights": [[0.5, 0.6, 0.0]]}}})
    with pytest.raises(ConfigError, match="methods.modpo.scalarizer"):
        config_from_dict({"methods": {"modpo": {"scalarizer": "tchebycheff"}}})
    cfg = load_config(ROOT / "configs" / "modpo.yaml")
    assert list(cfg.methods.enabled()) == ["modpo"] and cfg.methods.modpo.per_weight


def test_margin_pairs_put_the_offset_on_the_trained_objective_only(tiny_fit_context) -> None:
    ctx = tiny_fit_context(n_pairs=6)
    rewards = pair_rewards(ctx.reward, ctx.pairs)
    assert rewards.shape == (6, 2, 3)
    expected = ctx.reward([ctx.pairs.prompts[2]], [ctx.pairs.responses[2][1]])[0]
    assert torch.allclose(rewards[2, 1], expected)
    train = margin_pairs(ctx.pairs, rewards, np.array([0.6, 0.4, 0.0]), 0, "linear")
    assert train.offset.shape == (6, 3) and torch.count_nonzero(train.offset[:, 1:]) == 0
    assert torch.allclose(train.offset[:, 0], 0.4 * (rewards[:, 1, 1] - rewards[:, 0, 1]) / 0.6)


def test_fit_trains_one_model_for_its_lambda(tiny_fit_context) -> None:
    ctx = tiny_fit_context(n_pairs=24)
    cfg = MODPOConfig(max_steps=4, eval_every=2, batch_size=4, lr=5e-3, target_modules=["q_proj", "v_proj"],
                      margin_pairs=16)
    with pytest.raises(ValueError, match="pass weights"):
        load_method("modpo").fit(ctx, cfg)
    policy, result = load_method("modpo").fit(ctx, cfg, [0.3, 0.7, 0.0])
    assert isinstance(policy, PerWeightPolicy) and result.steps >= 2
    assert result.history[-1]["trained_objective"] == 1.0  # the largest weight's labels
    losses = [h for h in result.history if "loss" in h]
    assert all(h["lambda/harmless"] == 1.0 for h in losses)  # DPO on harmless; the rest enters as a margin
    assert policy.generate(["how do i bake bread?"], np.array([0.3, 0.7, 0.0]), max_new_tokens=4)
