"""Rewarded Soups: the λ-merge of per-objective adapters (exact delta space), training, save/load."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from pareto.config import SoupsConfig, load_config
from pareto.methods import load_method
from pareto.models.conditioned import load_conditioned
from pareto.models.policy import load_policy
from pareto.models.soups import SoupsPolicy, merge_adapters, objective_adapter
from pareto.objectives import aggregate_losses
from pareto.objectives.losses import masked_objective_means, per_objective_dpo_losses
from tests.conftest import ROOT

OBJECTIVES = ("helpful", "harmless", "concise")
TARGETS = ["q_proj", "v_proj", "down_proj"]


def soup_model(tiny_lm: Path, rank: int = 4):
    """K adapters with random non-zero A and B (as if trained), different ranks' scalings alike."""
    base, tok = load_policy(tiny_lm)
    names = [objective_adapter(o) for o in OBJECTIVES]
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    return model, tok, names


def logits(model, tok, adapter: str) -> torch.Tensor:
    model.set_adapter(adapter)
    ids = tok(["User: how do i bake bread?\nAssistant: mix flour and"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("merge", ["delta", "params"])
def test_merged_adapter_at_a_vertex_equals_that_objectives_adapter(tiny_lm, merge) -> None:
    model, tok, names = soup_model(tiny_lm)
    for i, name in enumerate(names):
        merged = merge_adapters(model, names, np.eye(3)[i], f"soup_{merge}_{i}", merge)
        assert torch.allclose(logits(model, tok, merged), logits(model, tok, name), atol=1e-5)
    assert not torch.allclose(logits(model, tok, names[0]), logits(model, tok, names[1]), atol=1e-3)


def _manual_delta_model(model, names, lam):
    """W0 + Σ_i λ_i s_i B_i A_i written into a plain copy of the base weights (the definition, by hand)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, LoraLayer):
                delta = sum(w * module.scaling[n] * module.lora_B[n].weight @ module.lora_A[n].weight
                            for n, w in zip(names, lam, strict=True))
                module.get_base_layer().weight += delta
    return clone


def test_delta_merge_is_the_weighted_sum_of_deltas_and_params_merge_is_not(tiny_lm) -> None:
    model, tok, names = soup_model(tiny_lm)
    lam = [0.5, 0.3, 0.2]
    merged = logits(model, tok, merge_adapters(model, names, lam, "soup_delta", "delta"))
    manual = _manual_delta_model(model, names, lam)
    ids = tok(["User: how do i bake bread?\nAssistant: mix flour and"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), manual.disable_adapter():
        expected = manual(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-5)
    averaged = logits(model, tok, merge_adapters(model, names, lam, "soup_params", "params"))
    assert not torch.allclose(averaged, expected, atol=1e-4)  # (Σλ B)(Σλ A) ≠ Σ λ B A off the vertices


def test_policy_serves_per_row_lambdas_and_caches_merges(tiny_lm) -> None:
    model, tok, names = soup_model(tiny_lm)
    policy = SoupsPolicy(model, tok, OBJECTIVES, cache_size=2)
    prompts = ["how do i bake bread?", "how do i fix a flat tire?"]
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.2, 0.3, 0.5])
    rows = policy.generate(prompts, np.stack([a, b]), max_new_tokens=8)
    assert rows == [policy.generate(prompts[:1], a, max_new_tokens=8)[0],
                    policy.generate(prompts[1:], b, max_new_tokens=8)[0]]
    policy.generate(prompts, np.array([0.0, 1.0, 0.0]), max_new_tokens=2)
    soups = [n for n in model.peft_config if n.startswith("soup_")]
    assert len(soups) == 2  # least recently used merges are deleted


def test_soups_loss_hand_computed() -> None:
    """Each adapter trains at its own vertex: the aggregate is that objective's DPO loss alone."""
    policy = torch.tensor([[-10.0, -12.0], [-6.0, -5.0]])
    ref = torch.tensor([[-11.0, -11.5], [-6.0, -6.0]])
    better = torch.tensor([[0, 1, -1], [1, 1, 0]])
    losses, mask = per_objective_dpo_losses(policy, ref, better, beta=0.5)
    per_objective = masked_objective_means(losses, mask)
    nls = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    m = [(-12 + 11.5) - (-10 + 11), (-5 + 6) - (-6 + 6)]  # r1 − r0 margins: −1.5, +1
    expected = [(nls(0.75) + nls(0.5)) / 2, (nls(-0.75) + nls(0.5)) / 2, nls(-0.5)]  # label 0 flips the sign
    assert [m[0], m[1]] == [-1.5, 1.0]
    for i in range(3):
        assert aggregate_losses(per_objective, torch.eye(3)[i]).item() == pytest.approx(expected[i], abs=1e-6)


def test_fit_trains_one_adapter_per_objective_and_round_trips(tiny_fit_context, tmp_path: Path) -> None:
    ctx = tiny_fit_context(n_pairs=24)
    cfg = SoupsConfig(max_steps=3, eval_every=3, batch_size=4, lr=5e-3, target_modules=TARGETS, lora_rank=4)
    policy, result = load_method("soups").fit(ctx, cfg)
    assert result.models == 3 and result.steps == 9 and result.cpu_seconds > 0
    for o in OBJECTIVES:  # one loss series per adapter, each trained on its own objective only
        rows = [h for h in result.history if f"{o}/loss" in h]
        assert len(rows) == 3 and all(h[f"{o}/lambda/{o}"] == 1.0 for h in rows)
    lam = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    prompts = ["how do i bake bread?", "explain how i can shoplift from a store."]
    before = policy.generate(prompts, lam, max_new_tokens=8)
    policy.save(tmp_path / "adapter")
    loaded = load_conditioned("soups", ctx.base_dir, tmp_path / "adapter", ctx.objectives)
    assert isinstance(loaded, SoupsPolicy) and loaded.merge == "delta"
    assert loaded.generate(prompts, lam, max_new_tokens=8) == before
    with pytest.raises(ValueError, match="not a Rewarded Soups model"):
        load_conditioned("soups", ctx.base_dir, tmp_path, ctx.objectives)


def test_config_file_validates() -> None:
    cfg = load_config(ROOT / "configs" / "soups.yaml")
    assert list(cfg.methods.enabled()) == ["soups"] and cfg.methods.soups.merge == "delta"


@pytest.mark.parametrize("kind", ["soups", "mah_dpo", "ric"])
def test_served_run_loads_each_conditioned_kind(tiny_lm, tmp_path: Path, kind: str) -> None:
    """A tracked run whose front records policy_kind is served by the right policy class, answering like it."""
    import mlflow

    from pareto.front.types import Front, FrontPoint
    from pareto.models.rewards_in_context import RiCPolicy
    from pareto.serving import ServedRun
    from tests.test_mah_dpo import build

    if kind == "soups":
        model, tok, _ = soup_model(tiny_lm)
        policy = SoupsPolicy(model, tok, OBJECTIVES)
    elif kind == "mah_dpo":
        from pareto.models.multihead import MultiHeadPolicy

        model, tok = build(tiny_lm)
        policy = MultiHeadPolicy(model, tok, OBJECTIVES)
    else:
        model, tok = load_policy(tiny_lm)
        policy = RiCPolicy(model, tok, OBJECTIVES, low=[-1.0, -1.0, -1.0], high=[1.0, 1.0, 1.0])
    policy.save(tmp_path / "adapter")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(tiny_lm), "base_model")
    client.log_artifacts(run.info.run_id, str(tmp_path / "adapter"), "adapter")
    model_uri = f"runs:/{run.info.run_id}/adapter"
    points = tuple(FrontPoint(tuple(w), (0.5, 0.5, 0.5), (0.01, 0.01, 0.01), model_uri) for w in np.eye(3))
    front = Front(kind, OBJECTIVES, points, (0.0, 0.0, 0.0), meta={"conditioned": True, "policy_kind": kind})
    client.log_text(run.info.run_id, front.to_json(), f"fronts/{kind}.json")
    served = ServedRun(run.info.run_id, uri, cache_dir=tmp_path / "cache")
    lam = [0.2, 0.3, 0.5]
    text, choice = served.answer(kind, "how do i bake bread?", lam, max_new_tokens=10)
    assert choice.conditioned and choice.served_weights == tuple(lam)
    assert type(served.policy(choice)) is type(policy)
    assert text == policy.generate(["how do i bake bread?"], np.array(lam), max_new_tokens=10)[0]
