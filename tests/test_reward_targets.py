"""DPO on the reward model's λ-scalarised preferences (`targets: reward_model`, reward distillation).

Binary per-objective labels carry no magnitudes: on a pair where helpful and harmless disagree, a λ that weighs them
equally sees one label each way, so DPO on labels is indifferent. The reward model's scores keep how much each
objective gains or loses, and σ(λ·Δr/τ) turns them into the pair's preference at that λ.
"""

from __future__ import annotations

import pytest
import torch

from pareto.config import config_from_dict
from tests.conftest import per_weight_margins


def test_targets_are_left_out_of_cache_keys_at_their_default_and_refused_where_they_do_not_apply() -> None:
    cfg = {"objectives": ["helpful", "harmless", "concise"], "methods": {"panacea": {}}}
    plain = config_from_dict(cfg)
    dumped = plain.model_dump()["methods"]["panacea"]
    assert "targets" not in dumped and "reward_temperature" not in dumped
    scored = config_from_dict({**cfg, "methods": {"panacea": {"targets": "reward_model", "reward_temperature": 0.1}}})
    assert scored.model_dump()["methods"]["panacea"]["targets"] == "reward_model"
    assert plain.digest("methods") != scored.digest("methods")
    refused = {
        "mah_dpo": ({"targets": "reward_model"}, "targets: MAH-DPO"),
        "modpo": ({"targets": "reward_model"}, "targets: MODPO"),
        "panacea": ({"targets": "reward_model", "aggregation": "tchebycheff"}, "drop aggregation"),
        "per_weight_dpo": ({"targets": "reward_model", "tie_weight": 1.0}, "tie_weight: with targets"),
    }
    for method, (section, message) in refused.items():
        with pytest.raises(ValueError, match=message):
            config_from_dict({**cfg, "methods": {method: section}})


def test_training_pairs_carry_the_reward_models_scores_only_when_asked(tiny_fit_context) -> None:
    from pareto.config import PanaceaConfig
    from pareto.methods import pair_rewards

    ctx = tiny_fit_context(n_pairs=12)
    assert ctx.training_pairs(PanaceaConfig()).rewards is None
    scored = ctx.training_pairs(PanaceaConfig(targets="reward_model"))
    assert scored.rewards.shape == (12, 2, 3)
    expected = ctx.reward([ctx.pairs.prompts[3]], [ctx.pairs.responses[3][1]])[0]
    assert torch.allclose(scored.rewards[3, 1], expected.float())
    assert torch.equal(pair_rewards(ctx.reward, ctx.pairs), scored.rewards)
    assert torch.equal(scored.subset([3]).rewards[0], scored.rewards[3])  # rewards travel with a subset

    # a reward that, unlike the oracle, scores the two responses of a tied pair apart
    def lengths(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([[len(r) % 7, len(r) % 5, len(r) % 3] for r in responses], dtype=torch.float32)

    ctx = tiny_fit_context(n_pairs=12)
    ctx.reward = lengths
    zeroed = ctx.training_pairs(PanaceaConfig(targets="reward_model", tied_gaps="zero")).rewards
    raw_rewards = ctx.training_pairs(PanaceaConfig(targets="reward_model")).rewards  # one context, both settings
    assert ctx.training_pairs(PanaceaConfig()).rewards is None  # labels again: the scores leave the pairs
    tied = ctx.pairs.better < 0  # [N, K]: harmless on safe prompts
    assert tied.any() and (~tied).any()
    gap, raw_gap = zeroed[:, 1] - zeroed[:, 0], raw_rewards[:, 1] - raw_rewards[:, 0]
    assert gap[tied].abs().max() < 1e-6 and raw_gap[tied].abs().max() > 0
    assert torch.equal(gap[~tied], raw_gap[~tied])  # only the tied entries change
    assert torch.allclose(zeroed.sum(1), raw_rewards.sum(1))  # each tied pair keeps its mean score


def test_zero_tied_gaps_are_refused_on_a_dataset_and_without_reward_targets() -> None:
    from pathlib import Path

    import yaml

    data = yaml.safe_load((Path(__file__).parents[1] / "configs" / "hh_smol.yaml").read_text())
    data["methods"]["panacea"].update(targets="reward_model", tied_gaps="zero")
    with pytest.raises(ValueError, match="missing labels") as err:
        config_from_dict(data)
    assert "methods.panacea.tied_gaps" in str(err.value)
    data["methods"]["panacea"].pop("tied_gaps")
    config_from_dict(data)  # the reward model's gaps on a dataset: valid
    with pytest.raises(ValueError, match="tied_gaps applies to targets"):
        config_from_dict({"objectives": ["helpful", "harmless", "concise"],
                          "methods": {"panacea": {"tied_gaps": "zero"}}})


def test_reward_targets_order_the_pairs_whose_labels_conflict(tiny_fit_context) -> None:
    """Trained at λ = (0.5, 0.5, 0), on held-out pairs where the helpful and harmless labels disagree: DPO on the
    labels sees one label each way and orders them no better than chance; fit to the reward's λ-scalarised gaps (the
    test context's reward is the task's oracle) it orders most of them as λ·oracle does. Means over three LoRA
    initialisations (the init draws from torch's global generator: seeded, whatever ran before)."""
    from pareto.data import load_task
    from pareto.methods.dpo import PairSet

    task = load_task("tiny-hh", seed=0)
    lam = torch.tensor([0.5, 0.5, 0.0])
    pairs = task.preference_pairs("val", 10, 0.0)  # every pair of every val prompt's candidates, clean labels
    gap = (task.oracle_scores([p.prompt for p in pairs], [p.response_1 for p in pairs])
           - task.oracle_scores([p.prompt for p in pairs], [p.response_0 for p in pairs])) @ lam
    conflict = [i for i, p in enumerate(pairs) if min(p.better[:2]) >= 0 and p.better[0] != p.better[1]
                and abs(gap[i]) > 1e-6][:96]
    held_out, gap = PairSet.from_pairs([pairs[i] for i in conflict], [0, 1, 2]), gap[conflict]
    assert len(conflict) >= 40

    def ordered(targets: str, init_seed: int) -> float:
        margin = per_weight_margins(tiny_fit_context, held_out, lam.tolist(), init_seed, targets=targets,
                                    reward_temperature=0.05)
        return ((margin * gap.sign()) > 0).float().mean().item()

    labels = sum(ordered("labels", s) for s in range(3)) / 3
    rewards = sum(ordered("reward_model", s) for s in range(3)) / 3
    print(f"conflicting pairs {len(conflict)}: ordered as λ·oracle by labels {labels:.3f}, by rewards {rewards:.3f}")
    assert rewards > 0.7 and rewards > labels + 0.25
