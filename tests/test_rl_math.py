"""PPO math (pareto.objectives.rl) against hand-computed cases and equivalences."""

from __future__ import annotations

import math

import pytest
import torch

from pareto.objectives import RunningZScore
from pareto.objectives.rl import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    combine_objectives,
    gae,
    group_advantages,
    last_token_index,
    masked_mean,
    masked_whiten,
    token_rewards,
    whiten_rewards,
)


def test_gae_matches_a_hand_computed_trajectory() -> None:
    # Position 0 is the prompt; the response is positions 1..3 with the sequence reward on the last token.
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[0, 1, 1, 1]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=3: δ=1−0.7=0.3, A=0.3; t=2: δ=0.7−0.6=0.1, A=0.1+0.5·0.3=0.25; t=1: δ=0.1, A=0.1+0.5·0.25=0.225
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.225, 0.25, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.725, 0.85, 1.0]]))
    # λ=1 is the Monte-Carlo return minus the baseline: A_t = γ^(T−t)·r − V_t
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.81 - 0.5, 0.9 - 0.6, 1.0 - 0.7]]))


def test_gae_ignores_padding_after_the_response() -> None:
    rewards = torch.tensor([[0.0, 0.0, 2.0, 5.0]])  # the 5 sits on padding and must not leak back
    values = torch.tensor([[0.0, 1.0, 1.5, 7.0]])
    mask = torch.tensor([[0, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 2.0 - 1.0, 2.0 - 1.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 2.0, 2.0, 0.0]]))


def test_per_objective_gae_mixed_by_lambda_equals_gae_of_the_mixture() -> None:
    """GAE is linear: Σ λ_k GAE(r_k, V_k) = GAE(Σ λ_k r_k, Σ λ_k V_k), so per-objective critics lose nothing."""
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0]])
    lam = torch.tensor([0.2, 0.5, 0.3, 0.05])
    adv_k, ret_k = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    adv, ret = gae((rewards * lam).sum(-1), (values * lam).sum(-1), mask, gamma=0.95, lam=0.9)
    torch.testing.assert_close((adv_k * lam).sum(-1), adv)
    torch.testing.assert_close((ret_k * lam).sum(-1), ret)


def test_token_rewards_sit_on_the_last_response_token() -> None:
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 3]
    out = token_rewards(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), mask)
    assert out.shape == (2, 4, 2)
    assert out[0, 2].tolist() == [1.0, 2.0] and out[1, 3].tolist() == [3.0, 4.0]
    assert out.abs().sum().item() == 10.0


def test_clipped_policy_loss_at_known_ratios() -> None:
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = clipped_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # ρ=1.5, A=1: max(−1.5, −1.2) = −1.2; ρ=0.5, A=−1: max(0.5, 0.8) = 0.8; ρ=1.1, A=2: unclipped −2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    # the clipped tokens give no gradient, the unclipped one gives −A·ρ/3
    logp = logp.clone().requires_grad_(True)
    clipped_policy_loss(logp, old, adv, mask, 0.2)[0].backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -2.0 * 1.1 / 3]]))


def test_policy_loss_with_a_global_denominator_splits_exactly_over_shards() -> None:
    """Two shards with denom = global tokens / 2, averaged (as DDP does), equal the whole batch's loss."""
    g = torch.Generator().manual_seed(1)
    logp, old, adv = (torch.randn(4, 5, generator=g) * 0.1 for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    whole, _ = clipped_policy_loss(logp, old, adv, mask, 0.2)
    n = mask.sum()
    shards = [clipped_policy_loss(logp[s], old[s], adv[s], mask[s], 0.2, denom=n / 2)[0]
              for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close((shards[0] + shards[1]) / 2, whole)


def test_clipped_value_loss() -> None:
    values, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    # unclipped: ½((1−0)² + (0−1)²)/2 = 0.5; clipped V=0.2 on token 0: max(1, 0.04) = 1 -> same
    assert clipped_value_loss(values, old, ret, mask).item() == pytest.approx(0.5)
    assert clipped_value_loss(values, old, ret, mask, clip_range=0.2).item() == pytest.approx(0.5)
    # V moved *towards* the return beyond the clip: the clipped (larger) error counts
    values = torch.tensor([[0.0, 0.9]])
    expected = 0.5 * (0.0 + (0.2 - 1.0) ** 2) / 2
    assert clipped_value_loss(values, old, ret, mask, clip_range=0.2).item() == pytest.approx(expected)
    # several value heads: per-head means, summed
    v3 = torch.stack([values, values], dim=-1)
    assert clipped_value_loss(v3, torch.zeros_like(v3), torch.zeros_like(v3), mask).item() == pytest.approx(
        2 * 0.5 * 0.81 / 2)


def test_per_objective_whitening_uses_each_objectives_own_scale() -> None:
    rewards = torch.tensor([[1.0, 100.0], [3.0, 300.0]])
    stats = RunningZScore(names=("a", "b"))
    out = whiten_rewards(rewards, stats)
    z = 1 / math.sqrt(2)  # mean 2 and 200, unbiased std √2 and 100√2
    torch.testing.assert_close(out, torch.tensor([[-z, -z], [z, z]]))
    # rescaling one objective changes nothing in the other column, nor its own whitened values
    stats2 = RunningZScore(names=("a", "b"))
    out2 = whiten_rewards(rewards * torch.tensor([1.0, 1000.0]), stats2)
    torch.testing.assert_close(out2, out)
    # running: a second batch updates the stats (Welford) before whitening
    out3 = whiten_rewards(torch.tensor([[5.0, 500.0]]), stats)
    mean, std = 3.0, 2.0  # values 1, 3, 5
    torch.testing.assert_close(out3, torch.tensor([[(5 - mean) / std, (500 - 100 * mean) / (100 * std)]]))
    assert stats.count == 3


def test_masked_mean_and_whiten() -> None:
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, denom=6).item() == pytest.approx(1.0)
    w = masked_whiten(x, mask)
    assert w[mask.bool()].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert w[~mask.bool()].abs().sum().item() == 0.0


def test_combine_objectives_scalarizes_per_row() -> None:
    r = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    lam = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    torch.testing.assert_close(combine_objectives(r, lam), torch.tensor([1.0, 0.125 + 1.5]))
    # Tchebycheff against z = 3: min_i λ_i (r_i − 3); a zero weight never binds
    torch.testing.assert_close(combine_objectives(r, lam, "tchebycheff", ideal=3.0),
                               torch.tensor([-2.0, min(0.25 * -2.5, 0.75 * -1.0)]))
    expected = 0.25 * math.log(1 / (1 + math.exp(-0.5))) + 0.75 * math.log(1 / (1 + math.exp(-2.0)))
    assert combine_objectives(r, lam, "log_sigmoid")[1].item() == pytest.approx(expected, abs=1e-6)


def test_adaptive_kl_controller() -> None:
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert ctl.update(2.0, 1) == pytest.approx(0.1 * 1.02)  # error clipped at +0.2
    assert ctl.update(0.9, 1) == pytest.approx(0.1 * 1.02 * (1 - 0.01))
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(100.0, 5) == 0.1
    assert AdaptiveKLController.from_state_dict(ctl.state_dict()) == ctl


def test_group_advantages_standardise_each_objective_within_its_group() -> None:
    """GDPO: per-objective z-scores within the group (unbiased std), then λ; `sum`: λ first, then the z-score."""
    rewards = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 6.0]]])  # one group of G = 3 samples, K = 2 objectives
    lam = torch.tensor([[0.5, 0.5]])
    # objective 0: mean 2, std 1 -> (-1, 0, 1); objective 1: mean 2, std sqrt(12) -> (-2, -2, 4) / sqrt(12)
    s12 = math.sqrt(12.0)
    expected = 0.5 * torch.tensor([[-1 - 2 / s12, 0 - 2 / s12, 1 + 4 / s12]])
    torch.testing.assert_close(group_advantages(rewards, lam, eps=0.0), expected)
    # sum: λ·r = (0.5, 1, 4.5), mean 2, std sqrt(4.75)
    summed = torch.tensor([[-1.5, -1.0, 2.5]]) / math.sqrt(4.75)
    torch.testing.assert_close(group_advantages(rewards, lam, normalize="sum", eps=0.0), summed)


def test_a_group_with_equal_rewards_gets_zero_advantage() -> None:
    rewards = torch.tensor([[[0.3, -1.0]] * 4, [[1.0, 2.0], [0.0, 2.0], [2.0, 2.0], [1.0, 2.0]]])
    lam = torch.tensor([[0.2, 0.8], [0.0, 1.0]])
    for normalize in ("per_objective", "sum"):
        adv = group_advantages(rewards, lam, normalize=normalize)
        assert torch.equal(adv[0], torch.zeros(4))  # every sample alike: nothing to learn
        assert torch.equal(adv[1], torch.zeros(4))  # λ only on an objective that does not vary within the group
    adv = group_advantages(rewards, torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    assert adv[1].tolist() == pytest.approx([0.0, -1 / math.sqrt(2 / 3), 1 / math.sqrt(2 / 3), 0.0], abs=1e-5)
    with pytest.raises(ValueError, match=r"\[B, G, K\]"):
        group_advantages(rewards[0], lam)
