"""Rewards-in-Context (RiC; Yang et al., ICML 2024): multi-reward conditional SFT, then rejection sampling.

Offline: every response of the training pairs is scored with the learned vector reward, z-scored per objective
over that set, and the policy (fully, or a LoRA adapter with `lora_rank`) is fine-tuned on
`prompt <helpful> +1.3 <harmless> -0.2 ...` → response, with the loss on the response tokens only.

Online (multi-objective rejection sampling, `online_rounds` times): desired rewards are sampled near the front
(each coordinate uniform over the observed range, then every coordinate but the smallest set to its maximum),
the policy generates for them, the vector reward scores the generations, a generation is kept when it is above
the `quantile` (0.7) of the round on *any* objective, it is relabelled with the rewards it actually obtained, and
the policy is fine-tuned again on those plus a quantile-filtered sample of the offline data.

The checkpoint after each stage is validated on held-out prompts (hypervolume of the reward model's front at the
simplex vertices and centre) and the best eligible one is kept, the untrained model included.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

from pareto.config import RiCConfig
from pareto.evaluation import evaluate_grid
from pareto.front.grid import preference_grid
from pareto.front.metrics import Z_REFERENCE, hypervolume
from pareto.methods import FitContext
from pareto.methods.checkpoint import TrainerState
from pareto.methods.dpo import TrainResult, front_validator
from pareto.methods.panacea import validation_weights
from pareto.models.policy import generate, pair_token_counts, repetition_rate, sft_train
from pareto.models.rewards_in_context import MAPPINGS, RiCPolicy, format_prompt
from pareto.objectives import RunningZScore


def offline_samples(prompts: Sequence[str], responses: Sequence[tuple[str, str]], limit: int | None,
                    rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Unique (prompt, response) samples of the preference pairs (both sides, as RiC uses chosen and rejected)."""
    seen = list(dict.fromkeys((p, r) for p, pair in zip(prompts, responses, strict=True) for r in pair))
    if limit is not None and len(seen) > limit:
        seen = [seen[i] for i in np.sort(rng.choice(len(seen), size=limit, replace=False))]
    return [p for p, _ in seen], [r for _, r in seen]


def within_context(tokenizer, examples: Sequence[tuple[str, str]], max_length: int) -> list[tuple[str, str]]:
    """The (conditioned prompt, response) examples that fit the model context (the reward tags make prompts longer;
    a truncated example would train on half a response)."""
    counts = pair_token_counts(tokenizer, [p for p, _ in examples], [r for _, r in examples])
    return [e for e, n in zip(examples, counts, strict=True) if n <= max_length]


def sample_targets(rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """RiC's `sample_goals` over the observed range: U[low, high] per objective, rounded to 0.1, then every
    coordinate except the smallest (relative to its range) raised to its maximum: targets on the front's edge."""
    span = high - low
    u = rng.random((n, len(low)))
    targets = np.round(low + u * span, 1)
    keep = np.argmin(u, axis=1)
    out = np.tile(high, (n, 1))
    out[np.arange(n), keep] = targets[np.arange(n), keep]
    return out


def above_quantile(z: np.ndarray, quantile: float) -> np.ndarray:
    """Rows above the `quantile` of their column on at least one objective (RiC's MORS filter)."""
    return (z >= np.quantile(z, quantile, axis=0, keepdims=True)).any(axis=1)


def fit(ctx: FitContext, cfg: RiCConfig, weights: Sequence[float] | None = None) -> tuple[RiCPolicy, TrainResult]:
    """Train one reward-conditioned model for every λ (`weights` is unused)."""
    objectives, max_length = ctx.objectives, ctx.max_length
    k = len(objectives)
    rng = np.random.default_rng(ctx.seed)
    torch.manual_seed(ctx.seed)
    result = TrainResult()
    start, cpu_start = time.perf_counter(), time.process_time()

    # ---- offline data: responses of the training pairs with their z-scored reward vectors -----------------------
    prompts, responses = offline_samples(ctx.pairs.prompts, ctx.pairs.responses, cfg.offline_samples, rng)
    raw = ctx.reward(prompts, responses).double()
    normalizer = RunningZScore(names=tuple(objectives))
    normalizer.update(raw)  # frozen from here: online generations are scored in the same units
    z = normalizer(raw).numpy()
    low, high = z.min(0), z.max(0)  # the observed range the λ → reward mapping works in

    model, tokenizer = ctx.load_base()
    if cfg.lora_rank is not None:
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                          lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    mapping = "linf" if cfg.mapping == "auto" else cfg.mapping
    policy = RiCPolicy(model, tokenizer, objectives, low, high, mapping, normalizer.state_dict(), observed=z)
    validate = front_validator(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts,
                               validation_weights(k), ctx.reward, cfg.max_repetition)
    best: dict = {}
    step = 0

    def check() -> None:
        """Validate the current model; remember it (and its reward range) when it is the best eligible one."""
        model.eval()
        metric, info, eligible = validate(step)
        result.history.append({"step": step, "val_metric": metric, "val_eligible": float(eligible), **info})
        if eligible and metric > result.best_metric:
            result.best_metric, result.best_step = metric, step
            best.update(state={n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                        low=list(policy.low), high=list(policy.high), observed=policy.observed)

    def train(examples: list[tuple[str, str]], epochs: int, lr: float, phase: str) -> None:
        nonlocal step
        fitting = within_context(tokenizer, examples, max_length)
        if len(fitting) < len(examples):
            result.history.append({"step": step, f"{phase}_dropped_too_long": float(len(examples) - len(fitting))})
        examples = fitting

        def log(i: int, loss: float) -> None:
            result.history.append({"step": step + i, "sft_loss": loss, f"{phase}_loss": loss})

        losses = sft_train(model, tokenizer, examples, epochs, lr, cfg.batch_size, max_length, ctx.seed + step,
                           on_step=log)
        step += len(losses)
        result.tokens += epochs * sum(len(tokenizer(p + " " + r)["input_ids"]) for p, r in examples)

    # Checkpoints: one after the offline pass (phase 1) and after each online round (phase r + 2). A rerun of the
    # same config resumes after the last finished phase, bit-identically (a killed phase is trained again).
    checkpoints = ctx.checkpoints(cfg)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    online: list[tuple[str, str, np.ndarray]] = []
    labels_seen = [z]
    phase = 0

    def save() -> None:
        if checkpoints is None:
            return
        tensors = {f"param/{n}": p for n, p in params.items()} | {"rng/torch": torch.get_rng_state()}
        tensors |= {f"best/{n}": t for n, t in best.get("state", {}).items()}
        checkpoints.save(TrainerState(phase, tensors, {}, {
            "numpy_rng": rng.bit_generator.state, "sft_step": step, "history": result.history, "tokens": result.tokens,
            "best_step": result.best_step, "best_metric": result.best_metric,
            "best_range": {k: np.asarray(best[k]).tolist() for k in ("low", "high", "observed")} if best else None,
            "range": {"low": list(policy.low), "high": list(policy.high),
                      "observed": np.asarray(policy.observed).tolist()},
            "online": [(p, t, o.tolist()) for p, t, o in online],
            "labels_seen": [a.tolist() for a in labels_seen[1:]],
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}))

    resumed = checkpoints.latest() if checkpoints is not None else None
    if resumed is not None:
        st, phase = resumed.state, resumed.step
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(resumed.tensors[f"param/{n}"])
        torch.set_rng_state(resumed.tensors["rng/torch"])
        rng.bit_generator.state = st["numpy_rng"]
        step, result.history, result.tokens = st["sft_step"], st["history"], st["tokens"]
        result.best_step, result.best_metric = st["best_step"], st["best_metric"]
        if st["best_range"] is not None:
            best.update(state={n: resumed.tensors[f"best/{n}"] for n in params},
                        **{k: np.asarray(v) if k == "observed" else v for k, v in st["best_range"].items()})
        policy.low, policy.high = st["range"]["low"], st["range"]["high"]
        policy.observed = np.asarray(st["range"]["observed"])
        online = [(p, t, np.asarray(o)) for p, t, o in st["online"]]
        labels_seen += [np.asarray(a).reshape(-1, k) for a in st["labels_seen"]]
        result.resumed_from = phase
        start -= st["seconds"]
        cpu_start -= st["cpu_seconds"]

    offline = [(format_prompt(p, objectives, zi), r) for p, r, zi in zip(prompts, responses, z, strict=True)]
    if phase < 1:
        check()  # the untrained model (the SFT model with tags it never saw) is the fallback
        train(offline, cfg.epochs, cfg.lr, "offline")
        check()
        phase = 1
        save()

    # ---- online: multi-objective rejection sampling rounds ------------------------------------------------------
    origin = np.flatnonzero(above_quantile(z, cfg.quantile))
    unique_prompts = list(dict.fromkeys(prompts))
    for r in range(phase - 1, cfg.online_rounds):
        chosen = rng.choice(len(unique_prompts), size=min(cfg.online_prompts, len(unique_prompts)), replace=False)
        round_prompts = [unique_prompts[i] for i in chosen]
        targets = sample_targets(rng, len(round_prompts), np.asarray(policy.low), np.asarray(policy.high))
        model.eval()
        texts = generate(model, tokenizer, [format_prompt(p, objectives, t) for p, t in zip(round_prompts, targets,
                                                                                             strict=True)],
                         max_new_tokens=int(ctx.gen.get("max_new_tokens", 48)), do_sample=True,
                         temperature=cfg.temperature, seed=ctx.seed + 1000 + r)
        obtained = normalizer(ctx.reward(round_prompts, texts).double()).numpy()
        fluent = np.array([bool(t.strip()) and repetition_rate([t]) == 0.0 for t in texts])
        keep = above_quantile(obtained, cfg.quantile) & fluent
        online += [(p, t, o) for p, t, o, ok in zip(round_prompts, texts, obtained, keep, strict=True) if ok]
        labels_seen.append(obtained[keep])
        # relabelled generations can reach beyond the offline range: the mapping follows the observed range
        seen = np.vstack(labels_seen)
        policy.low, policy.high, policy.observed = seen.min(0).tolist(), seen.max(0).tolist(), seen
        mixed = rng.choice(origin, size=min(cfg.origin_samples, len(origin)), replace=False)
        examples = [offline[i] for i in mixed] + [(format_prompt(p, objectives, o), t) for p, t, o in online]
        result.history.append({"step": step, "online_round": float(r + 1), "online_generated": float(len(texts)),
                               "online_kept": float(keep.sum()), "online_fluent": float(fluent.mean()),
                               **{f"online_mean_z/{o}": float(v) for o, v in zip(objectives, obtained.mean(0),
                                                                                 strict=True)}})
        train(examples, cfg.online_epochs, cfg.online_lr, "online")
        check()
        phase = r + 2
        save()

    if best:  # restore the best validated weights and the reward range they were trained with
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in best["state"].items():
                params[name].copy_(value)
        policy.low, policy.high, policy.observed = best["low"], best["high"], best["observed"]
    model.eval()
    if cfg.mapping == "auto":
        choose_mapping(policy, ctx, cfg, result, step)
    result.steps = step
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return policy, result


def choose_mapping(policy: RiCPolicy, ctx: FitContext, cfg: RiCConfig, result: TrainResult, step: int) -> None:
    """Pick the λ → reward mapping on held-out prompts, inference only, scored by the reward model: among the
    mappings whose front keeps every objective highest at its own vertex (the controllability a user slides λ
    for), the one with the largest hypervolume; if none does, the largest hypervolume.

    Compared on the vertices, the edge midpoints and the centre (the closed forms agree at the vertices; `front`
    does not).
    """
    k = len(ctx.objectives)
    weights = np.vstack([preference_grid(k, n_points=2 * k), np.full((1, k), 1.0 / k)])
    vertex_rows = [int(np.flatnonzero((weights == np.eye(k)[i]).all(1))[0]) for i in range(k)]
    scores, controllable = {}, {}
    for mapping in MAPPINGS:
        policy.mapping = mapping
        points = evaluate_grid(lambda p, w: policy.generate(p, w, **ctx.gen), ctx.val_prompts, weights,
                               {"rm": ctx.reward}, n_samples=0)
        means = np.array([p.mean["rm"] for p in points])
        fluent = np.mean([p.repetition_rate for p in points]) <= cfg.max_repetition
        at_vertices = means[vertex_rows]  # [K vertices, K objectives]
        controllable[mapping] = bool((np.diag(at_vertices)[:, None] >= at_vertices.T).all())
        scores[mapping] = hypervolume(means, [Z_REFERENCE] * k) if fluent else float("-inf")
    pool = [m for m in MAPPINGS if controllable[m] and scores[m] > float("-inf")] or list(MAPPINGS)
    policy.mapping = max(pool, key=lambda m: scores[m])  # ties keep the earlier (the paper's linf first)
    result.history.append({"step": step, "mapping_index": float(MAPPINGS.index(policy.mapping)),
                           **{f"mapping_val_metric/{m}": v for m, v in scores.items()},
                           **{f"mapping_controllable/{m}": float(c) for m, c in controllable.items()}})
