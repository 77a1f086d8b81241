"""GRPO with a vector reward on the PPO actors: the group advantage and KL term by hand, critic-free trainer ranks,
both GRPO methods (one policy per λ, one conditioned policy) trained, checkpointed and resumed exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pareto.config import GRPOMethodConfig
from pareto.distributed.ppo.numerics import grpo_advantages
from pareto.objectives.rl import kl_penalty
from tests.test_ppo import assert_same_state, base, final_state, local_ray, run, small_cfg  # noqa: F401 (fixtures)


def test_grpo_advantages_are_group_standardised_per_objective_then_scalarized() -> None:
    mcfg = GRPOMethodConfig(samples_per_prompt=2)
    # two prompts, two answers each; prompt 0 under λ=(1, 0), prompt 1 under λ=(0.5, 0.5)
    raw = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 0.0], [5.0, 2.0]])
    lam = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.float32)
    _, adv = grpo_advantages(mcfg, raw, raw, lam, mask)
    # group 0: objective 0 standardised over (1, 3) -> (−1/√2, +1/√2) (std with Bessel: √2); λ keeps objective 0
    # group 1: objective 0 is (5, 5) -> 0, 0; objective 1 (0, 2) -> ∓1/√2; λ halves it
    s = 1 / 2**0.5
    expected_rows = torch.tensor([-s, s, -0.5 * s, 0.5 * s])
    assert torch.allclose(adv, expected_rows[:, None] * mask, atol=1e-5)
    # `sum`: λ·raw first ((1, 3) and (2.5, 3.5)), then standardised in each group: the same ∓1/√2 for both groups
    _, adv_sum = grpo_advantages(GRPOMethodConfig(samples_per_prompt=2, normalize="sum"), raw, raw, lam, mask)
    assert torch.allclose(adv_sum, torch.tensor([-s, s, -s, s])[:, None] * mask, atol=1e-5)
    with pytest.raises(ValueError, match="groups of samples_per_prompt=4"):
        grpo_advantages(GRPOMethodConfig(samples_per_prompt=4), raw[:2], raw[:2], lam[:2], mask[:2])


def test_kl_penalty_is_k3_times_beta_per_row() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -1.5]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    coef = torch.tensor([0.1, 0.2])

    def k3(d: float) -> float:
        return float(np.exp(d) - d - 1)

    want = (0.1 * k3(-0.5) + 0.1 * k3(0.0) + 0.2 * k3(-1.0)) / 3
    assert kl_penalty(logp, ref, mask, coef).item() == pytest.approx(want)
    assert kl_penalty(ref, ref, mask, coef).item() == 0.0  # no divergence, no penalty


@pytest.mark.parametrize("method", ["panacea_grpo", "morl_grpo"])
def test_grpo_trains_without_a_critic_and_resumes_exactly(local_ray, base, tmp_path: Path,  # noqa: F811
                                                          method: str) -> None:
    over = {"preferences_per_step": 2} if method == "panacea_grpo" else {"weights": [[0.5, 0.5]]}
    cfg = small_cfg(tmp_path, method, max_steps=4, samples_per_prompt=4, kl_target=None, **over)
    out = run(cfg, base, tmp_path / "A", method=method)[method if method == "panacea_grpo" else f"{method}/0"]
    history = out["history"]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert all(row["value_loss"] == 0.0 for row in history)
    assert max(row["kl_loss"] for row in history) > 0  # the KL term is on: π_θ leaves π_ref
    assert all(abs(row["rollout_logprob_diff"]) < 1e-4 for row in history)  # the weight sync still works
    tensors, _ = final_state(tmp_path / "A")
    assert tensors["critic"] == {} and tensors["policy"]  # the ranks held no critic
    if method == "morl_grpo":
        return  # the resume below is the same code for both
    # stopped after step 2 and resumed: the same final state as the run that never stopped
    run(cfg, base, tmp_path / "B", until_step=2, method=method)
    run(cfg, base, tmp_path / "B", method=method)
    assert_same_state(final_state(tmp_path / "A"), final_state(tmp_path / "B"))
