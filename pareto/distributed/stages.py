"""The pipeline's stages as plain functions of (config, inputs) -> picklable results.

`pipeline.py` runs them as Ray tasks; tests can call them directly. Each stage seeds itself, pins its torch
threads to its CPU share, runs on the device its task was given (`Placement`), reads its task through
`pareto.data.task` (tiny-hh or a real dataset: the stages never ask which), and returns what it produced as
bytes or, for a large model, by reference (see `bundle.py`).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from pareto.cache import source_digest
from pareto.config import PPO_METHODS, ExperimentConfig
from pareto.data.task import Task, build_task, context_budget, fit_to_context, model_context
from pareto.distributed.bundle import ModelRef, pack, ship, unpack
from pareto.evaluation import PointEval, evaluate_grid
from pareto.io import ensure_writable_dir
from pareto.methods import FitContext, load_method
from pareto.methods.dpo import PairSet
from pareto.models.device import Placement
from pareto.models.policy import (
    build_tiny_model,
    check_fits_context,
    generate,
    load_policy,
    load_tokenizer,
    save_model,
    set_seed,
    sft_train,
    train_tokenizer,
)
from pareto.models.reward import LearnedVectorReward, TextEncoder, pair_text, train_reward_model
from pareto.models.scorer import SourcedReward


def _setup(cfg: ExperimentConfig, seed_offset: int = 0) -> None:
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_task)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    set_seed(cfg.seed + seed_offset)


def load_options(cfg: ExperimentConfig) -> dict:
    """How the base policy's weights load everywhere: the model section's dtype and remote-code permission."""
    return {"dtype": cfg.model.dtype, "trust_remote_code": cfg.model.trust_remote_code}


def peak_memory_gib(placement: Placement) -> float:
    """Peak memory of this task: the GPU's allocator peak on CUDA, else the process's peak resident set."""
    if placement.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---- the task, the base model's source and context ----------------------------------------------------------------
def base_source(cfg: ExperimentConfig) -> str:
    """Where the base policy is loaded from (not 'tiny'): a local folder (a GGUF file dequantized and cached once
    under the state folder) or a hub id."""
    from pareto.models.sources import resolve_base

    return resolve_base(cfg.model.base, cfg.state_path(), trust_remote_code=cfg.model.trust_remote_code)


def base_tokenizer(cfg: ExperimentConfig, examples: list[tuple[str, str]]):
    """The base policy's tokenizer: trained on the task corpus for the tiny LM (deterministic: the same one the
    SFT stage saves), loaded for a real model. Cheap: no model weights."""
    if cfg.model.base == "tiny":
        return train_tokenizer([f"User: {p}\nAssistant: {r}" for p, r in examples], cfg.model.tiny.vocab_size)
    return load_tokenizer(base_source(cfg), trust_remote_code=cfg.model.trust_remote_code)


def max_length(cfg: ExperimentConfig, base_dir: str | Path, tokenizer) -> int:
    """Tokens of prompt + response a trainer encodes: the tiny LM's context, or the real model's budget."""
    if cfg.task.dataset is None:
        return cfg.model.tiny.max_length
    return sum(context_budget(cfg, model_context(base_dir, tokenizer)))


def fitted_task(cfg: ExperimentConfig, base_dir: str | Path | None = None, tokenizer=None) -> Task:
    """The config's task, with a dataset's prompts fit into the base model's context (counted in `stats`)."""
    task = build_task(cfg)
    if cfg.task.dataset is None:
        return task
    if tokenizer is None:
        base_dir = base_dir or base_source(cfg)
        tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    prompt_tokens, response_tokens = context_budget(cfg, model_context(base_dir, tokenizer))
    return fit_to_context(task, tokenizer, prompt_tokens, response_tokens, cfg.model.long_responses)


def preflight(cfg: ExperimentConfig) -> Path:
    """What the drivers (`pareto run`, `pareto sweep`) check before MLflow, Ray or any training starts: a writable
    state folder, data that parses (every bad row is a one-line error), a base model that resolves, and for the
    embedded task training rows that fit the context. -> the state folder."""
    state = ensure_writable_dir(cfg.state_path())  # read-only / full / not a folder
    if cfg.task.dataset is None:
        check_context(cfg)
    else:
        build_task(cfg)  # reads every row: a damaged file stops here, before compute
        if cfg.model.base != "tiny":  # the tiny LM is built from the data by the SFT stage
            base_source(cfg)
    return state


def check_context(cfg: ExperimentConfig) -> None:
    """Every training row of the embedded task fits the tiny LM's context, or one-line `DatasetError`: the SFT
    examples (when the base is SFT-trained) and the training preference pairs, both responses (when a method trains
    on them; the PPO methods only take prompts). Real data is fit by rule instead (`pareto.data.task`).
    """
    task = build_task(cfg)
    rows = []
    if cfg.model.needs_sft:
        rows += [(f"task {cfg.task.name} train split, SFT example {i}", p, r)
                 for i, (p, r) in enumerate(task.sft_examples)]
    if any(name not in PPO_METHODS for name in cfg.methods.enabled()):
        rows += [(f"task {cfg.task.name} train split, pair {i} response_{j}", pair.prompt, response)
                 for i, pair in enumerate(task.pairs["train"])
                 for j, response in enumerate((pair.response_0, pair.response_1))]
    try:
        tokenizer = base_tokenizer(cfg, task.sft_examples)
    except OSError as exc:  # a hub model the driver cannot see (offline head node): the workers load it, unchecked
        warnings.warn(f"context check skipped: tokenizer of model.base={cfg.model.base!r} not loadable here "
                      f"({str(exc).splitlines()[0][:120]})", stacklevel=2)
        return
    check_fits_context(tokenizer, rows, cfg.model.tiny.max_length, "model.tiny.max_length")


# ---- stage 1: the base policy and the reward model ------------------------------------------------------------------
def sft_stage(cfg: ExperimentConfig, out_dir: str | None = None) -> dict:
    """The base policy: the tiny LM built from the task corpus, or a real model (hub id, folder, GGUF); then SFT
    (tiny-hh: every response style; a dataset: its chosen replies) when `model.sft` asks for it. A model larger
    than `resources.by_value_max_mb` is written to `out_dir` and returned by reference."""
    _setup(cfg)
    placement = Placement.from_config(cfg)
    start = time.perf_counter()
    if cfg.model.base == "tiny":
        task = build_task(cfg)
        tokenizer = base_tokenizer(cfg, task.sft_examples)
        model = placement.place(build_tiny_model(cfg.model.tiny, tokenizer, cfg.seed))
        length = cfg.model.tiny.max_length
    else:
        source = base_source(cfg)
        model, tokenizer = load_policy(source, **load_options(cfg), **placement.load_kwargs())
        task = fitted_task(cfg, source, tokenizer)
        length = max_length(cfg, source, tokenizer)
    losses: list[float] = []
    if cfg.model.needs_sft:
        tiny = cfg.model.tiny
        with placement.context():
            losses = sft_train(model, tokenizer, task.sft_examples, tiny.sft_epochs, tiny.sft_lr,
                               tiny.sft_batch_size, length, cfg.seed)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model.to("cpu"), tokenizer, Path(tmp) / "model")
        model_dir = Path(tmp) / "model"
        bundle = ship(model_dir, out_dir, cfg.resources.by_value_max_bytes) if out_dir else pack(model_dir)
    return {"bundle": bundle, "losses": losses, "seconds": seconds, "examples": len(task.sft_examples),
            "parameters": sum(p.numel() for p in model.parameters())}


def reward_stage(cfg: ExperimentConfig) -> dict:
    """Train the multi-head Bradley–Terry reward model on the task's training labels (masked where a pair has no
    label for an objective); held-out pairwise accuracy on the val pairs. The normaliser is fit on the training
    pairs' responses here; `base_eval_stage` refits it on the base model's answers when the config says so."""
    _setup(cfg, 1)
    task = build_task(cfg)
    names = tuple(cfg.objectives)
    rm_cfg = cfg.reward_model
    train, held_out = task.pairs["train"], task.pairs["val"]
    if rm_cfg.max_pairs is not None and len(train) > rm_cfg.max_pairs:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train), rm_cfg.max_pairs, replace=False))
        train = [train[i] for i in keep]
    device = Placement.from_config(cfg).device
    sources = cfg.reward_sources()
    prompts = [p.prompt for p in train for _ in (0, 1)]
    responses = [r for p in train for r in (p.response_0, p.response_1)]
    start = time.perf_counter()
    learned, accuracy, history = None, {}, []
    if "learned" in sources.values():  # heads only when some objective is scored by one
        encoder = TextEncoder(max_length=rm_cfg.encoder_max_length, device=device)
        trained = train_reward_model(encoder, names, train, held_out, epochs=rm_cfg.epochs, lr=rm_cfg.lr,
                                     seed=cfg.seed, weight_decay=rm_cfg.weight_decay, hidden=(rm_cfg.hidden_size,),
                                     length_feature=rm_cfg.length_feature, tie_weight=rm_cfg.tie_weight)
        learned = LearnedVectorReward(encoder, trained.model, names)
        learned.fit_normalizer(prompts, responses)
        encoder.share([pair_text(p, r) for p, r in zip(prompts, responses, strict=True)])  # RiC scores them again
        accuracy = {k: v for k, v in trained.accuracy.items() if sources[k] == "learned"}
        history = trained.history
    reward = SourcedReward(names, sources, learned, rm_cfg.hf, device=device)
    if set(sources.values()) != {"learned"} and normalize_on(cfg) == "pairs":
        reward.fit_normalizer(prompts, responses)  # else base_eval_stage fits it on the base model's answers
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        reward.save(Path(tmp) / "reward")
        bundle = pack(Path(tmp) / "reward")
    return {"bundle": bundle, "accuracy": accuracy, "history": history, "seconds": seconds,
            "normalizer": reward.normalizer.state_dict(), "train_pairs": len(train), "held_out_pairs": len(held_out),
            "encoded_text_example": pair_text(prompts[0], responses[0])}


def normalize_on(cfg: ExperimentConfig) -> str:
    mode = cfg.reward_model.normalize_on
    return mode if mode != "auto" else ("pairs" if cfg.task.dataset is None else "base_answers")


def _gen_settings(cfg: ExperimentConfig) -> dict:
    ev = cfg.evaluation
    return {"max_new_tokens": ev.max_new_tokens, "do_sample": ev.do_sample, "temperature": ev.temperature,
            "repetition_penalty": ev.repetition_penalty}


def scorers(task: Task, reward) -> dict:
    """Who scores a front: the oracle when the task has one, and always the reward model."""
    return ({"oracle": task.oracle} if task.oracle is not None else {}) | {"reward_model": reward}


def base_eval_stage(cfg: ExperimentConfig, base: ModelRef, reward_bundle: ModelRef) -> dict:
    """The base model's own point: its answers to the eval prompts, scored like every front point. When the config
    normalises on base answers, the reward normaliser is first refit on its answers to validation prompts (logged),
    and the refit reward model is returned for every later stage."""
    _setup(cfg, 3)
    placement = Placement.from_config(cfg)
    gen = _gen_settings(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = unpack(base, Path(tmp) / "base")
        model, tokenizer = load_policy(base_dir, **load_options(cfg), device=placement.device)
        task = fitted_task(cfg, base_dir, tokenizer)
        reward = SourcedReward.load(unpack(reward_bundle, Path(tmp) / "reward"), device=placement.device)
        start = time.perf_counter()

        def answer(prompts: list[str], weights: np.ndarray) -> list[str]:
            with placement.context():
                return generate(model, tokenizer, prompts, **gen)

        refit = None
        if normalize_on(cfg) == "base_answers":
            val = task.prompts["val"][: cfg.evaluation.normalizer_prompts or None]
            reward.fit_normalizer(val, answer(val, np.zeros((len(val), cfg.k))))
            refit = Path(tmp) / "reward-refit"
            reward.save(refit)
        if cfg.evaluation.do_sample:
            torch.manual_seed(cfg.seed)
        eval_prompts = task.prompts["eval"][: cfg.evaluation.n_prompts or None]
        point = evaluate_grid(answer, eval_prompts, np.full((1, cfg.k), 1.0 / cfg.k), scorers(task, reward))[0]
        return {"point": point.to_dict(), "seconds": time.perf_counter() - start,
                "normalizer": reward.normalizer.state_dict(), "task": task.describe(),
                "reward_bundle": pack(refit) if refit is not None else None}


# ---- stage 2: methods ---------------------------------------------------------------------------------------------
def method_stage(cfg: ExperimentConfig, method: str, base: ModelRef, reward_bundle: ModelRef,
                 weights: list[float] | None = None, grid: list[list[float]] | None = None,
                 seed_offset: int = 0) -> dict:
    """Train one method (or one per-weight model), then evaluate it on the held-out prompts of the λ grid."""
    _setup(cfg, 2 + seed_offset)
    placement = Placement.from_config(cfg)
    names = tuple(cfg.objectives)
    mcfg = getattr(cfg.methods, method)
    gen = _gen_settings(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = unpack(base, Path(tmp) / "base")
        tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
        task = fitted_task(cfg, base_dir, tokenizer)
        pairs = PairSet.from_pairs(task.pairs["train"], range(len(names)))
        limit = getattr(mcfg, "max_pairs", None)
        if limit is not None and len(pairs) > limit:  # a seeded pool: each pair's reference runs once
            pairs = pairs.subset(np.sort(np.random.default_rng(cfg.seed).choice(len(pairs), limit, replace=False)))
        val_prompts = task.prompts["val"][: mcfg.val_prompts]
        eval_prompts = task.prompts["eval"][: cfg.evaluation.n_prompts or None]
        reward = SourcedReward.load(unpack(reward_bundle, Path(tmp) / "reward"), device=placement.device)
        ctx = FitContext(base_dir=base_dir, pairs=pairs, val_prompts=val_prompts, reward=reward, objectives=names,
                         max_length=max_length(cfg, base_dir, tokenizer), seed=cfg.seed + seed_offset, gen=gen,
                         task=task, placement=placement, load_options=load_options(cfg),
                         checkpoint_dir=checkpoint_dir(cfg, method, weights, seed_offset),
                         cache_dir=Path(cfg.state_path()) / "cache")
        with placement.context():
            policy, result = load_method(method).fit(ctx, mcfg, weights)
            eval_grid = np.asarray([weights] if mcfg.per_weight else grid)
            start = time.perf_counter()
            if cfg.evaluation.do_sample:
                torch.manual_seed(cfg.seed)
            points = evaluate_grid(lambda p, w: policy.generate(p, w, **gen), eval_prompts, eval_grid,
                                   scorers(task, reward))
            eval_seconds = time.perf_counter() - start
        policy.save(Path(tmp) / "adapter")
        adapter = ship(Path(tmp) / "adapter", Path(cfg.state_path()) / "models" / f"{method}-{_digest(cfg)}"
                       f"-{seed_offset}", cfg.resources.by_value_max_bytes)
    return {"method": method, "weights": weights, "adapter": adapter, "history": result.history,
            "best_step": result.best_step, "steps": result.steps,
            # CPU-seconds, not wall: compute comparisons must not depend on what else the machine runs
            "train_seconds": getattr(result, "cpu_seconds", 0.0) or result.seconds,
            "train_wall_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "eval_seconds": eval_seconds,
            "points": [p.to_dict() for p in points], "peak_memory_gib": peak_memory_gib(placement),
            "models_trained": getattr(result, "models", 1), "policy_kind": getattr(policy, "kind", None),
            "resumed_from": getattr(result, "resumed_from", 0)}


def checkpoint_dir(cfg: ExperimentConfig, method: str, weights: list[float] | None, seed_offset: int) -> Path:
    """Where one method task's trainers checkpoint: the same config, code and λ resume there after a kill."""
    at = "" if weights is None else "-" + "_".join(f"{w:.4f}" for w in weights)
    return (Path(cfg.state_path()) / "checkpoints" /
            f"{method}-{_digest(cfg)}-{source_digest()}-{seed_offset}{at}")


def _digest(cfg: ExperimentConfig) -> str:
    return cfg.digest("seed", "task", "objectives", "model", "reward_model", "methods", "evaluation")


def trial_stage(cfg: ExperimentConfig, method: str, base: ModelRef, reward_bundle: ModelRef, weights: list[float],
                params: dict, trial_number: int) -> dict:
    """One sweep trial: train one per-weight model at λ = `weights` with hyper-parameters `params`, evaluate it.

    A pure function of its inputs (the seed follows the trial number), so a re-run trial gives the same result.
    """
    mcfg = getattr(cfg.methods, method)
    swept = type(mcfg).model_validate({**mcfg.model_dump(), **params})  # validated: a bad value fails loudly
    trial_cfg = cfg.model_copy(update={"methods": cfg.methods.model_copy(update={method: swept})})
    return method_stage(trial_cfg, method, base, reward_bundle, weights=list(weights), seed_offset=trial_number)


def oracle_front(task: Task, cfg: ExperimentConfig, n_prompts: int | None = None,
                 n_weights: int = 200) -> tuple[np.ndarray, np.ndarray] | None:
    """The true front of the experiment's objectives on the eval prompts; None for a task without an oracle.

    For each λ of a fine grid: the mean oracle vector of the best candidate per prompt under λ-linear
    scalarisation. Works for any subset of the task's objectives.
    """
    from pareto.front.grid import preference_grid

    if task.synthetic is None or task.oracle is None:
        return None
    prompts = task.synthetic.prompts("eval")[: n_prompts or None]
    scores = [task.oracle([p.text] * len(c), c).numpy() for p in prompts for c in [task.synthetic.candidates(p)]]
    grid = preference_grid(len(task.objectives), n_points=n_weights)
    values = np.array([np.mean([s[np.argmax(s @ w)] for s in scores], axis=0) for w in grid])
    return grid, values


__all__ = ["PointEval", "base_eval_stage", "method_stage", "oracle_front", "preflight", "reward_stage", "sft_stage",
           "trial_stage"]
