"""The pipeline's stages as plain functions of (config, inputs) -> picklable results.

`pipeline.py` runs them as Ray tasks; tests can call them directly. Each stage seeds itself, pins its torch
threads to its CPU share, and returns what it produced as bytes (see `bundle.py`).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pareto.config import PPO_METHODS, ConfigError, ExperimentConfig
from pareto.data import load_task
from pareto.distributed.bundle import Bundle, pack, unpack
from pareto.evaluation import evaluate_grid
from pareto.io import ensure_writable_dir
from pareto.methods import FitContext, load_method
from pareto.methods.dpo import PairSet
from pareto.models.policy import (
    build_tiny_model,
    check_fits_context,
    load_policy,
    load_tokenizer,
    save_model,
    set_seed,
    sft_train,
    train_tokenizer,
)
from pareto.models.reward import LearnedVectorReward, TextEncoder, pair_text, train_reward_model


def _setup(cfg: ExperimentConfig, seed_offset: int = 0) -> None:
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_task)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(cfg.seed + seed_offset)


class TaskOracle:
    """The task's oracle restricted to the experiment's objectives, as a VectorReward."""

    def __init__(self, task, objectives: tuple[str, ...]) -> None:
        self.task, self.names = task, objectives
        self.index = [task.objectives.index(o) for o in objectives]

    def __call__(self, prompts, responses) -> torch.Tensor:
        return self.task.oracle_scores(prompts, responses)[:, self.index]


def _objective_index(cfg: ExperimentConfig, task) -> list[int]:
    return [task.objectives.index(o) for o in cfg.objectives]


def base_tokenizer(cfg: ExperimentConfig, examples: list[tuple[str, str]]):
    """The base policy's tokenizer: trained on the task corpus for the tiny LM (deterministic: the same one the
    SFT stage saves), loaded for a Hugging Face id or path. Cheap: no model weights."""
    if cfg.model.base == "tiny":
        return train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples], cfg.model.tiny.vocab_size)
    return load_tokenizer(cfg.model.base)


def preflight(cfg: ExperimentConfig) -> Path:
    """What the drivers (`pareto run`, `pareto sweep`) check before MLflow, Ray or any training starts: a writable
    state folder, a task the stages can train on, and training rows that fit the context. -> the state folder."""
    state = ensure_writable_dir(cfg.state_path())  # read-only / full / not a folder
    if cfg.task.dataset is not None:
        raise ConfigError("task.dataset: `pareto run` and `pareto sweep` train on the embedded tiny-hh task in this "
                          "version; a real-dataset recipe validates and plans (`pareto validate CONFIG --plan`) but "
                          "its training stages are not wired yet; remove task.dataset to run on tiny-hh")
    check_context(cfg)
    return state


def check_context(cfg: ExperimentConfig) -> None:
    """Every training row fits the model's context (`model.tiny.max_length`), or one-line `DatasetError`: the SFT
    examples (when the base is SFT-trained) and the training preference pairs, both responses (when a method trains
    on them; the PPO methods only take prompts).
    """
    task = load_task(cfg.task.name, seed=cfg.seed)
    examples = task.sft_examples()
    rows = []
    if cfg.model.needs_sft:
        rows += [(f"task {cfg.task.name} train split, SFT example {i}", p, r) for i, (p, r) in enumerate(examples)]
    if any(name not in PPO_METHODS for name in cfg.methods.enabled()):
        pairs = task.preference_pairs("train", cfg.task.pairs_per_prompt, cfg.task.label_noise, seed=cfg.seed)
        rows += [(f"task {cfg.task.name} train split, pair {i} response_{j}", pair.prompt, response)
                 for i, pair in enumerate(pairs) for j, response in enumerate((pair.response_0, pair.response_1))]
    try:
        tokenizer = base_tokenizer(cfg, examples)
    except OSError as exc:  # a hub model the driver cannot see (offline head node): the workers load it, unchecked
        warnings.warn(f"context check skipped: tokenizer of model.base={cfg.model.base!r} not loadable here "
                      f"({str(exc).splitlines()[0][:120]})", stacklevel=2)
        return
    check_fits_context(tokenizer, rows, cfg.model.tiny.max_length, "model.tiny.max_length")


def sft_stage(cfg: ExperimentConfig) -> dict:
    """The base policy: the tiny LM built from the task corpus, or a Hugging Face id / local path; then SFT on
    every response style of the task when `model.sft` asks for it."""
    _setup(cfg)
    task = load_task(cfg.task.name, seed=cfg.seed)
    examples = task.sft_examples()
    tiny = cfg.model.tiny
    start = time.perf_counter()
    if cfg.model.base == "tiny":
        tokenizer = base_tokenizer(cfg, examples)
        model = build_tiny_model(tiny, tokenizer, cfg.seed)
    else:
        model, tokenizer = load_policy(cfg.model.base, cfg.model.dtype)
    losses: list[float] = []
    if cfg.model.needs_sft:
        losses = sft_train(model, tokenizer, examples, tiny.sft_epochs, tiny.sft_lr, tiny.sft_batch_size,
                           tiny.max_length, cfg.seed)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tokenizer, Path(tmp) / "model")
        bundle = pack(Path(tmp) / "model")
    return {"bundle": bundle, "losses": losses, "seconds": seconds, "examples": len(examples),
            "parameters": sum(p.numel() for p in model.parameters())}


def reward_stage(cfg: ExperimentConfig) -> dict:
    """Train the multi-head Bradley–Terry reward model on noisy oracle-labelled pairs; check held-out accuracy."""
    _setup(cfg, 1)
    task = load_task(cfg.task.name, seed=cfg.seed)
    idx = _objective_index(cfg, task)
    names = tuple(cfg.objectives)
    train = _subset_labels(task.preference_pairs("train", cfg.task.pairs_per_prompt, cfg.task.label_noise,
                                                 seed=cfg.seed), idx)
    # Held-out accuracy is measured against clean oracle labels: the true quality of the reward model.
    held_out = _subset_labels(task.preference_pairs("val", cfg.task.pairs_per_prompt, 0.0, seed=cfg.seed + 1), idx)
    encoder = TextEncoder()
    start = time.perf_counter()
    rm_cfg = cfg.reward_model
    trained = train_reward_model(encoder, names, train, held_out, epochs=rm_cfg.epochs, lr=rm_cfg.lr, seed=cfg.seed,
                                 weight_decay=rm_cfg.weight_decay, hidden=(rm_cfg.hidden_size,),
                                 length_feature=rm_cfg.length_feature, tie_weight=rm_cfg.tie_weight)
    reward = LearnedVectorReward(encoder, trained.model, names)
    prompts = [p.prompt for p in train for _ in (0, 1)]
    responses = [r for p in train for r in (p.response_0, p.response_1)]
    reward.fit_normalizer(prompts, responses)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        reward.save(Path(tmp) / "reward")
        bundle = pack(Path(tmp) / "reward")
    return {"bundle": bundle, "accuracy": dict(trained.accuracy), "history": trained.history, "seconds": seconds,
            "normalizer": reward.normalizer.state_dict(), "train_pairs": len(train), "held_out_pairs": len(held_out),
            "encoded_text_example": pair_text(prompts[0], responses[0])}


def _subset_labels(pairs: list, idx: list[int]) -> list:
    """Pairs carrying only the labels of the experiment's objectives."""
    from dataclasses import replace

    return [replace(p, better=tuple(p.better[i] for i in idx)) for p in pairs]


def method_stage(cfg: ExperimentConfig, method: str, base: Bundle, reward_bundle: Bundle,
                 weights: list[float] | None = None, grid: list[list[float]] | None = None,
                 seed_offset: int = 0) -> dict:
    """Train one method (or one per-weight model), then evaluate it on the held-out prompts of the λ grid."""
    _setup(cfg, 2 + seed_offset)
    task = load_task(cfg.task.name, seed=cfg.seed)
    idx = _objective_index(cfg, task)
    names = tuple(cfg.objectives)
    mcfg = getattr(cfg.methods, method)
    pairs = PairSet.from_pairs(task.preference_pairs("train", cfg.task.pairs_per_prompt, cfg.task.label_noise,
                                                     seed=cfg.seed), idx)
    val_prompts = [p.text for p in task.prompts("val")][: mcfg.val_prompts]
    eval_prompts = [p.text for p in task.prompts("eval")][: cfg.evaluation.n_prompts or None]
    ev = cfg.evaluation
    gen = {"max_new_tokens": ev.max_new_tokens, "do_sample": ev.do_sample, "temperature": ev.temperature}
    with tempfile.TemporaryDirectory() as tmp:
        reward = LearnedVectorReward.load(unpack(reward_bundle, Path(tmp) / "reward"), encoder=TextEncoder())
        ctx = FitContext(base_dir=unpack(base, Path(tmp) / "base"), pairs=pairs, val_prompts=val_prompts,
                         reward=reward, objectives=names, max_length=cfg.model.tiny.max_length,
                         seed=cfg.seed + seed_offset, gen=gen, task=task)
        policy, result = load_method(method).fit(ctx, mcfg, weights)
        eval_grid = np.asarray([weights] if mcfg.per_weight else grid)
        start = time.perf_counter()
        if ev.do_sample:
            torch.manual_seed(cfg.seed)
        points = evaluate_grid(lambda p, w: policy.generate(p, w, **gen), eval_prompts, eval_grid,
                               {"oracle": TaskOracle(task, names), "reward_model": reward})
        eval_seconds = time.perf_counter() - start
        policy.save(Path(tmp) / "adapter")
        adapter = pack(Path(tmp) / "adapter")
    return {"method": method, "weights": weights, "adapter": adapter, "history": result.history,
            "best_step": result.best_step, "steps": result.steps,
            # CPU-seconds, not wall: compute comparisons must not depend on what else the machine runs
            "train_seconds": getattr(result, "cpu_seconds", 0.0) or result.seconds,
            "train_wall_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "eval_seconds": eval_seconds,
            "points": [p.to_dict() for p in points],
            "models_trained": getattr(result, "models", 1), "policy_kind": getattr(policy, "kind", None)}


def trial_stage(cfg: ExperimentConfig, method: str, base: Bundle, reward_bundle: Bundle, weights: list[float],
                params: dict, trial_number: int) -> dict:
    """One sweep trial: train one per-weight model at λ = `weights` with hyper-parameters `params`, evaluate it.

    A pure function of its inputs (the seed follows the trial number), so a re-run trial gives the same result.
    """
    mcfg = getattr(cfg.methods, method)
    swept = type(mcfg).model_validate({**mcfg.model_dump(), **params})  # validated: a bad value fails loudly
    trial_cfg = cfg.model_copy(update={"methods": cfg.methods.model_copy(update={method: swept})})
    return method_stage(trial_cfg, method, base, reward_bundle, weights=list(weights), seed_offset=trial_number)


def oracle_front(task, cfg: ExperimentConfig, n_prompts: int | None = None,
                 n_weights: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The true front of the experiment's objectives on the eval prompts.

    For each λ of a fine grid: the mean oracle vector of the best candidate per prompt under λ-linear
    scalarisation. Works for any subset of the task's objectives.
    """
    from pareto.front.grid import preference_grid

    names = tuple(cfg.objectives)
    oracle = TaskOracle(task, names)
    prompts = task.prompts("eval")[: n_prompts or None]
    scores = [oracle([p.text] * len(c), c).numpy() for p in prompts for c in [task.candidates(p)]]
    grid = preference_grid(len(names), n_points=n_weights)
    values = np.array([np.mean([s[np.argmax(s @ w)] for s in scores], axis=0) for w in grid])
    return grid, values
