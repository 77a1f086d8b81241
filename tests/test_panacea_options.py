"""Panacea's options: Tchebycheff aggregation trains, vertex oversampling happens at the configured rate (in the
sampler and in the λ schedule of a real run), and the option values are validated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pareto.config import ConfigError, PanaceaConfig, config_from_dict, load_config
from pareto.front.grid import sample_preferences
from pareto.methods import load_method
from tests.conftest import ROOT

K = 3


def _is_vertex(lam: np.ndarray) -> np.ndarray:
    return np.isclose(lam.max(-1), 1.0)


@pytest.mark.parametrize("vertex_prob", [0.0, 0.3, 0.7, 1.0])
def test_vertex_oversampling_frequency_matches_vertex_prob(vertex_prob: float) -> None:
    n = 20000
    lam = sample_preferences(np.random.default_rng(1), K, n, vertex_prob)
    np.testing.assert_allclose(lam.sum(1), 1.0)
    share = _is_vertex(lam).mean()
    sd = math.sqrt(vertex_prob * (1 - vertex_prob) / n)
    assert abs(share - vertex_prob) <= 4 * sd + 1e-12  # a Dirichlet draw is never exactly a vertex
    if vertex_prob > 0:  # vertices are chosen uniformly
        counts = np.bincount(lam[_is_vertex(lam)].argmax(1), minlength=K) / _is_vertex(lam).sum()
        np.testing.assert_allclose(counts, 1 / K, atol=0.03)


def _small_context(tiny_lm):
    """16 tiny-hh pairs on the test LM, scored by the oracle (fits in 60 steps)."""
    from pareto.data import load_task
    from pareto.data.task import TaskOracle
    from pareto.methods import FitContext
    from pareto.methods.dpo import PairSet

    task = load_task("tiny-hh", seed=0)
    names = ("helpful", "harmless", "concise")
    pairs = PairSet.from_pairs(task.preference_pairs("train", 4, 0.1, seed=0)[:16], [0, 1, 2])
    return FitContext(base_dir=tiny_lm, pairs=pairs, val_prompts=[p.text for p in task.prompts("val")][:2],
                      reward=TaskOracle(task, names), objectives=names, max_length=256, seed=0,
                      gen={"max_new_tokens": 4, "do_sample": False, "temperature": 1.0})


@pytest.fixture(scope="module")
def tcheby_run(tiny_lm) -> tuple:
    ctx = _small_context(tiny_lm)
    cfg = PanaceaConfig(aggregation="tchebycheff", vertex_prob=0.5, nll_weight=0.0, lr=1e-2, max_steps=60,
                        eval_every=1000, batch_size=8, lora_rank=4, target_modules=["q_proj", "v_proj", "down_proj"])
    policy, result = load_method("panacea").fit(ctx, cfg)
    return cfg, [h for h in result.history if "loss" in h]


def test_tchebycheff_panacea_loss_decreases(tcheby_run) -> None:
    _, steps = tcheby_run
    loss = np.array([h["loss"] for h in steps])
    lam = np.array([[h[f"lambda/{o}"] for o in ("helpful", "harmless", "concise")] for h in steps])
    dpo = np.array([[h[f"dpo_loss/{o}"] for o in ("helpful", "harmless", "concise")] for h in steps])
    np.testing.assert_allclose(loss, (lam * dpo).max(1), rtol=1e-5, atol=1e-7)  # loss = max_i λ_i L_i, z = 0
    # the adapter starts as the reference model: every DPO loss is log 2 at the first step
    assert loss[0] == pytest.approx(lam[0].max() * math.log(2), abs=1e-5)
    # λ is drawn afresh each step, so compare means over steps (same λ distribution early and late)
    assert loss[-15:].mean() < loss[:15].mean() - 0.1


def test_training_lambda_schedule_oversamples_vertices(tcheby_run) -> None:
    cfg, steps = tcheby_run
    lam = np.array([[h[f"lambda/{o}"] for o in ("helpful", "harmless", "concise")] for h in steps])
    share = _is_vertex(lam).mean()
    sd = math.sqrt(cfg.vertex_prob * (1 - cfg.vertex_prob) / len(lam))
    assert abs(share - cfg.vertex_prob) <= 4 * sd


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="methods.panacea.aggregation"):
        config_from_dict({"methods": {"panacea": {"aggregation": "median"}}})
    with pytest.raises(ConfigError, match="methods.panacea.vertex_prob"):
        config_from_dict({"methods": {"panacea": {"vertex_prob": 1.5}}})
    cfg = load_config(ROOT / "configs" / "panacea.yaml")
    assert cfg.methods.panacea.aggregation == "tchebycheff" and list(cfg.methods.enabled()) == ["panacea"]


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_returns_the_best_or_the_last_checkpoint(tiny_fit_context, keep: str) -> None:
    """keep=best restores the state of the best validation check (here the untouched model: a validator that only
    ever likes step 0); keep=last returns the trained weights."""
    from pareto.methods.dpo import train_dpo
    from pareto.methods.reference import reference_logps
    from pareto.models.policy import load_policy
    from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, set_preference

    ctx = tiny_fit_context(n_pairs=16)
    model, tok = load_policy(ctx.base_dir)
    model = add_panacea_adapter(model, panacea_lora_config(K, 4, 16.0, ["q_proj", "v_proj"]))
    with model.disable_adapter():
        ctx.pairs.ref_logp = reference_logps(model, tok, ctx.pairs, ctx.max_length)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = PanaceaConfig(lr=1e-2, max_steps=6, eval_every=3, patience=10, batch_size=4, nll_weight=0.0, keep=keep)
    result = train_dpo(model, tok, ctx.pairs, cfg, objectives=ctx.objectives,
                       sample_weights=lambda rng: np.full(K, 1 / K), apply_weights=lambda w: set_preference(model, w),
                       validate=lambda step: (1.0 if step == 0 else 0.0, {}, True), max_length=ctx.max_length)
    moved = any(not torch.equal(p, start[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert result.steps == 6
    assert (result.best_step, moved) == ((0, False) if keep == "best" else (6, True))


def test_eval_start_skips_the_early_checks_and_cannot_stop_before_it(tiny_fit_context) -> None:
    """eval_start=6, eval_every=2, max_steps=9: held-out checks at 0 (the fallback), 6, 8 and 9 only. A validator
    that never beats step 0 stops a run with patience 1 at its first periodic check: step 6, not 2. Skipping checks
    leaves training untouched: the step losses up to 6 equal those of a run that also checks at 2 and 4. With
    val_prompts=0 and keep=last there are no checks at all, and the same step losses."""
    from pareto.methods.dpo import train_dpo
    from pareto.methods.reference import reference_logps
    from pareto.models.policy import load_policy
    from pareto.models.svd_lora import add_panacea_adapter, panacea_lora_config, set_preference

    ctx = tiny_fit_context(n_pairs=16)

    def run(**overrides: int | str) -> tuple[list[int], list[float]]:
        torch.manual_seed(0)
        model, tok = load_policy(ctx.base_dir)
        model = add_panacea_adapter(model, panacea_lora_config(K, 4, 16.0, ["q_proj", "v_proj"]))
        with model.disable_adapter():
            ctx.pairs.ref_logp = reference_logps(model, tok, ctx.pairs, ctx.max_length)
        cfg = PanaceaConfig(lr=1e-2, max_steps=9, eval_every=2, batch_size=4, nll_weight=0.0, **overrides)
        result = train_dpo(model, tok, ctx.pairs, cfg, objectives=ctx.objectives,
                           sample_weights=lambda rng: np.full(K, 1 / K),
                           apply_weights=lambda w: set_preference(model, w),
                           validate=lambda step: (-float(step), {}, True), max_length=ctx.max_length)
        assert result.best_step == (0 if overrides.get("keep", "best") == "best" else result.steps)
        return ([h["step"] for h in result.history if "val_metric" in h],
                [h["loss"] for h in result.history if "loss" in h])

    assert run(eval_start=6, patience=10)[0] == [0, 6, 8, 9]
    unchecked, unchecked_losses = run(val_prompts=0, keep="last")  # no held-out checks at all, not even the last
    assert unchecked == [] and unchecked_losses == run(eval_start=6, patience=10, keep="last")[1]
    late_checks, late_losses = run(eval_start=6, patience=1)
    assert late_checks == [0, 6] and len(late_losses) == 6
    every_checks, every_losses = run(patience=3)  # checks at 2, 4, 6: the third bad one stops it at step 6
    assert every_checks == [0, 2, 4, 6]
    assert late_losses == every_losses


def test_batch_by_lambda_draws_each_pair_slot_for_an_objective_with_probability_lambda() -> None:
    """`batch_by_lambda`: λ first, then pair slots by λ: a vertex's batch holds only pairs labelled for its objective,
    an interior λ's batch splits in proportion to λ (multinomial), and the trainer is handed the same λ."""
    from pareto.methods.dpo import LambdaBatches

    # 30 pairs label objective 0 only, 20 label objective 1 only, 10 label both (-1: no label)
    better = torch.tensor([[1, -1]] * 30 + [[-1, 0]] * 20 + [[0, 1]] * 10)
    rng = np.random.default_rng(3)
    at_vertex = LambdaBatches(better, batch_size=6, vertex_prob=1.0)
    for _ in range(50):
        idx, labels = at_vertex.sample_batch(rng)
        j = int(np.argmax(at_vertex.lam))
        assert len(idx) == 6 and len(set(idx.tolist())) == 6 and (labels[:, j] >= 0).all()
        np.testing.assert_array_equal(at_vertex.sample_weights(rng), at_vertex.lam)
    mixed = LambdaBatches(better, batch_size=8, vertex_prob=0.0)
    share0, lam0 = [], []
    for _ in range(2000):
        idx, labels = mixed.sample_batch(rng)
        assert len(idx) == 8
        lam0.append(mixed.lam[0])
        share0.append(float((labels[:, 0] >= 0).float().mean()))
    # slots for objective 0 ~ λ_0 (plus the pairs drawn for objective 1 that label both: 10 of 30 such pairs)
    expected = np.mean(lam0) + (1 - np.mean(lam0)) * 10 / 30
    assert abs(np.mean(share0) - expected) < 0.02
    # a per-weight model's sampler keeps its own λ and spends its slots in proportion to it
    lam = np.array([0.25, 0.75])
    fixed = LambdaBatches(better, batch_size=8, vertex_prob=0.0, fixed=lam)
    share1 = []
    for _ in range(2000):
        idx, labels = fixed.sample_batch(rng)
        np.testing.assert_array_equal(fixed.sample_weights(rng), lam)
        share1.append(float((labels[:, 1] >= 0).float().mean()))
    assert abs(np.mean(share1) - (0.75 + 0.25 * 10 / 40)) < 0.02  # 10 of objective 0's 40 pairs label 1 as well
    vertex = LambdaBatches(better, batch_size=5, vertex_prob=0.0, fixed=np.array([1.0, 0.0]))
    assert all((vertex.sample_batch(rng)[1][:, 0] >= 0).all() for _ in range(50))


def test_cosine_schedule_warms_up_then_decays_to_zero(tiny_lm) -> None:
    cfg = PanaceaConfig(lr=4e-3, max_steps=100, lr_schedule="cosine", warmup_ratio=0.05)
    assert [cfg.learning_rate(s) for s in (1, 5)] == pytest.approx([4e-3 / 5, 4e-3])  # 5 warm-up steps
    assert cfg.learning_rate(5 + 95 // 2) == pytest.approx(2e-3, rel=0.02)  # half-way through the decay
    assert cfg.learning_rate(100) == pytest.approx(0.0, abs=1e-12)
    assert PanaceaConfig(lr=4e-3).learning_rate(77) == 4e-3  # constant: the default
    # the trainer applies it: each step's logged rate is the schedule's, and the weights differ from a constant-rate
    # run of the same seed and data (the optimizer really stepped with the schedule, not only the log)
    ctx = _small_context(tiny_lm)
    run = PanaceaConfig(lr=1e-2, max_steps=8, eval_every=1000, batch_size=4, lora_rank=4, lr_schedule="cosine",
                        warmup_ratio=0.25, target_modules=["q_proj", "v_proj"], keep="last")
    torch.manual_seed(0)  # the adapter's initial singular vectors: the same in both runs
    cosine, result = load_method("panacea").fit(ctx, run)
    logged = [h["lr"] for h in result.history if "lr" in h]
    assert logged == pytest.approx([run.learning_rate(s) for s in range(1, 9)])
    assert logged[1] == pytest.approx(1e-2) and logged[-1] == pytest.approx(0.0, abs=1e-12)
    flat = run.model_copy(update={"lr_schedule": "constant"})
    torch.manual_seed(0)
    constant, _ = load_method("panacea").fit(_small_context(tiny_lm), flat)
    moved = [not torch.equal(a, b) for a, b in zip(cosine.model.parameters(), constant.model.parameters(), strict=True)
             if a.requires_grad]
    assert moved and all(moved)
