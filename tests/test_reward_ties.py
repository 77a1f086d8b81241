"""The optional tie term of the Bradley–Terry loss (`reward_model.tie_weight`, default 0 = ties masked).

On tiny-hh the harmless label is a tie (-1) on every safe prompt, so with ties masked the harmless head never sees
those pairs and may score their two responses far apart; the tie term fits them to equal scores.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder must never need the hub

import pytest
import torch

from pareto.config import config_from_dict
from pareto.data import load_task
from pareto.models.reward import TextEncoder, bradley_terry_loss, reward_inputs, train_reward_model


def test_tie_term_values_by_hand() -> None:
    chosen = torch.tensor([[1.0, 0.3], [2.0, -1.0]])
    rejected = torch.tensor([[0.0, 0.3], [1.0, 1.0]])
    labelled = torch.tensor([[True, False], [True, False]])
    base = bradley_terry_loss(chosen, rejected, labelled)
    assert base[0].item() == pytest.approx(math.log1p(math.exp(-1.0)))  # -log σ(1) on both pairs
    assert base[1].item() == 0.0  # only ties: nothing without the term
    assert torch.equal(bradley_terry_loss(chosen, rejected, labelled, ~labelled, 0.0), base)  # off = as before
    with_ties = bradley_terry_loss(chosen, rejected, labelled, ~labelled, 2.0)
    # ties at Δ = 0 and Δ = -2: 0 and ½·softplus(-2) + ½·softplus(2) - log 2, averaged, × 2
    tie = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) - math.log(2.0)
    assert with_ties[0].item() == pytest.approx(base[0].item())
    assert with_ties[1].item() == pytest.approx(2.0 * tie / 2)


def test_tie_weight_is_left_out_of_cache_keys_at_its_default() -> None:
    cfg = {"objectives": ["helpful", "harmless", "concise"]}
    plain, zero = config_from_dict(cfg), config_from_dict({**cfg, "reward_model": {"tie_weight": 0.0}})
    tied = config_from_dict({**cfg, "reward_model": {"tie_weight": 0.5}})
    assert "tie_weight" not in plain.model_dump()["reward_model"]
    assert plain.digest("reward_model") == zero.digest("reward_model") != tied.digest("reward_model")


def test_tie_term_makes_the_harmless_head_indifferent_on_safe_prompts() -> None:
    task = load_task("tiny-hh", seed=0)
    names = tuple(task.objectives)
    h = names.index("harmless")
    train = task.preference_pairs("train")[:600]
    val = task.preference_pairs("val")[:300]
    ties = [p for p in val if p.better[h] == -1]
    assert len(ties) > 30  # the safe prompts: no harmless preference
    encoder = TextEncoder()

    def gap(tie_weight: float) -> tuple[float, float]:
        result = train_reward_model(encoder, names, train, val, epochs=15, seed=0, tie_weight=tie_weight)
        e0 = reward_inputs(encoder, [p.prompt for p in ties], [p.response_0 for p in ties], True, False)
        e1 = reward_inputs(encoder, [p.prompt for p in ties], [p.response_1 for p in ties], True, False)
        with torch.no_grad():
            diff = (result.model(e0) - result.model(e1))[:, h].abs().mean().item()
        return diff, result.accuracy["harmless"]

    masked_gap, masked_acc = gap(0.0)
    tied_gap, tied_acc = gap(1.0)
    assert tied_gap < 0.5 * masked_gap  # held-out safe-prompt pairs now score (nearly) alike
    assert tied_acc > masked_acc - 0.05  # without costing the labelled pairs' accuracy
