"""The optional tie term of the Bradley–Terry loss (`reward_model.tie_weight`, default 0 = ties masked).

On tiny-hh the harmless label is a tie (-1) on every safe prompt, so with ties masked the harmless head never sees
those pairs and may score their two responses far apart; the tie term fits them to equal scores.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder must never need the hub

import pytest
import torch
import yaml

from pareto.config import config_from_dict
from pareto.data import load_task
from pareto.models.reward import TextEncoder, bradley_terry_loss, reward_inputs, train_reward_model
from tests.conftest import per_weight_margins


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


def test_dpo_tie_weight_is_left_out_of_cache_keys_and_refused_on_a_dataset() -> None:
    cfg = {"objectives": ["helpful", "harmless", "concise"], "methods": {"panacea": {}}}
    plain = config_from_dict(cfg)
    tied = config_from_dict({**cfg, "methods": {"panacea": {"tie_weight": 1.0}}})
    assert "tie_weight" not in plain.model_dump()["methods"]["panacea"]
    assert plain.digest("methods") != tied.digest("methods")
    # a dataset's -1 is also a missing label (HH-RLHF's helpful pairs have no harmless label): refused, by field
    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "hh_smol.yaml").read_text())
    config_from_dict(data)  # as shipped: valid
    for section, field in (("methods", "methods.panacea.tie_weight"), ("reward_model", "reward_model.tie_weight")):
        bad = copy.deepcopy(data)
        target = bad["methods"]["panacea"] if section == "methods" else bad["reward_model"]
        target["tie_weight"] = 0.5
        with pytest.raises(ValueError, match="missing labels") as err:
            config_from_dict(bad)
        assert field in str(err.value) or getattr(err.value, "field", None) == field
    # MAH-DPO's objective-tagged batches set the other objectives' labels to -1: refused there too
    with pytest.raises(ValueError, match="tie_weight: MAH-DPO"):
        config_from_dict({**cfg, "methods": {"mah_dpo": {"tie_weight": 1.0}}})


def test_dpo_tie_term_keeps_the_policy_indifferent_where_an_objective_is(tiny_fit_context) -> None:
    """Trained at the harmless vertex, DPO refuses risky requests; without the tie term that lesson spills over to the
    safe ones (whose two responses harmless rates the same), with it the implicit rewards of held-out safe-prompt pairs
    stay closer, while the risky pairs are learned nearly as well. Means over three LoRA initialisations: one
    initialisation alone moves the numbers by a third."""
    from pareto.methods.dpo import PairSet

    task = load_task("tiny-hh", seed=0)
    h = list(task.objectives).index("harmless")
    held_out = PairSet.from_pairs(task.preference_pairs("val", 4, 0.0)[:160], [0, 1, 2])
    tied = (held_out.better[:, h] < 0).nonzero().flatten().tolist()
    labelled = (held_out.better[:, h] >= 0).nonzero().flatten().tolist()
    assert len(tied) > 20 and len(labelled) > 20

    def trained(tie_weight: float, init_seed: int) -> tuple[float, float]:
        margin = per_weight_margins(tiny_fit_context, held_out, [0.0, 1.0, 0.0], init_seed, tie_weight=tie_weight)
        drift = margin[tied].abs().mean().item()
        sign = torch.where(held_out.better[labelled, h] == 1, 1.0, -1.0)
        accuracy = ((margin[labelled] * sign) > 0).float().mean().item()
        return drift, accuracy

    def mean_over_inits(tie_weight: float) -> tuple[float, float]:
        runs = [trained(tie_weight, seed) for seed in range(3)]
        return sum(d for d, _ in runs) / len(runs), sum(a for _, a in runs) / len(runs)

    masked_drift, masked_acc = mean_over_inits(0.0)
    tied_drift, tied_acc = mean_over_inits(1.0)
    assert tied_drift < 0.5 * masked_drift  # measured: 1.65 against 4.67 nats
    assert tied_acc > masked_acc - 0.1 and tied_acc > 0.6  # measured: 0.74 against 0.78 (chance: 0.5)
