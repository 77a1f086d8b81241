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
    rng = np.random.default_rng(ctx.seed)
    torch.manual_seed(ctx.seed)
    run = _RiCRun(ctx, cfg, rng)
    # Checkpoints: one after the offline pass (phase 1) and after each online round (phase r + 2). A rerun of the
    # same config resumes after the last finished phase, bit-identically (a killed phase is trained again).
    run.resume()
    if run.phase < 1:
        run.offline_phase()
    for r in range(run.phase - 1, cfg.online_rounds):
        run.online_round(r)
    return run.finish()


class _RiCRun:
    """The state of one RiC fit: the offline data, the conditioned model, the best validated weights, the online
    data so far and the phase reached (what a checkpoint carries)."""

    def __init__(self, ctx: FitContext, cfg: RiCConfig, rng: np.random.Generator) -> None:
        self.ctx, self.cfg, self.rng = ctx, cfg, rng
        self.objectives = ctx.objectives
        self.result = TrainResult()
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        # offline data: responses of the training pairs with their z-scored reward vectors
        prompts, responses = offline_samples(ctx.pairs.prompts, ctx.pairs.responses, cfg.offline_samples, rng)
        raw = ctx.reward(prompts, responses).double()
        self.normalizer = RunningZScore(names=tuple(self.objectives))
        self.normalizer.update(raw)  # frozen from here: online generations are scored in the same units
        z = self.normalizer(raw).numpy()
        self.model, self.tokenizer, self.policy = _conditioned_model(ctx, cfg, self.normalizer, z)
        self.validate = front_validator(lambda p, w: self.policy.generate(p, w, **ctx.gen), ctx.val_prompts,
                                        validation_weights(len(self.objectives)), ctx.reward, cfg.max_repetition)
        self.best: dict = {}
        self.step = 0
        self.checkpoints = ctx.checkpoints(cfg)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.online: list[tuple[str, str, np.ndarray]] = []
        self.labels_seen = [z]
        self.phase = 0
        self.offline = [(format_prompt(p, self.objectives, zi, cfg.tags), r)
                        for p, r, zi in zip(prompts, responses, z, strict=True)]
        self.origin = np.flatnonzero(above_quantile(z, cfg.quantile))  # offline rows the online rounds mix in
        self.unique_prompts = list(dict.fromkeys(prompts))

    def check(self) -> None:
        """Validate the current model; remember it (and its reward range) when it is the best eligible one."""
        self.model.eval()
        metric, info, eligible = self.validate(self.step)
        result = self.result
        result.history.append({"step": self.step, "val_metric": metric, "val_eligible": float(eligible), **info})
        if eligible and metric > result.best_metric:
            result.best_metric, result.best_step = metric, self.step
            self.best.update(state={n: p.detach().clone() for n, p in self.model.named_parameters()
                                    if p.requires_grad},
                             low=list(self.policy.low), high=list(self.policy.high), observed=self.policy.observed)

    def train(self, examples: list[tuple[str, str]], epochs: int, lr: float, phase: str) -> None:
        """Fine-tune on the (conditioned prompt, response) examples that fit the context."""
        tokenizer, result, step = self.tokenizer, self.result, self.step
        fitting = within_context(tokenizer, examples, self.ctx.max_length)
        if len(fitting) < len(examples):
            result.history.append({"step": step, f"{phase}_dropped_too_long": float(len(examples) - len(fitting))})
        examples = fitting

        def log(i: int, loss: float) -> None:
            result.history.append({"step": step + i, "sft_loss": loss, f"{phase}_loss": loss})

        losses = sft_train(self.model, tokenizer, examples, epochs, lr, self.cfg.batch_size, self.ctx.max_length,
                           self.ctx.seed + step, on_step=log, response_logits_only=True)
        self.step += len(losses)
        result.tokens += epochs * sum(len(tokenizer(p + " " + r)["input_ids"]) for p, r in examples)

    def save(self) -> None:
        if self.checkpoints is None:
            return
        best, policy, result = self.best, self.policy, self.result
        tensors = {f"param/{n}": p for n, p in self.params.items()} | {"rng/torch": torch.get_rng_state()}
        tensors |= {f"best/{n}": t for n, t in best.get("state", {}).items()}
        self.checkpoints.save(TrainerState(self.phase, tensors, {}, {
            "numpy_rng": self.rng.bit_generator.state, "sft_step": self.step, "history": result.history,
            "tokens": result.tokens, "best_step": result.best_step, "best_metric": result.best_metric,
            "best_range": {k: np.asarray(best[k]).tolist() for k in ("low", "high", "observed")} if best else None,
            "range": {"low": list(policy.low), "high": list(policy.high),
                      "observed": np.asarray(policy.observed).tolist()},
            "online": [(p, t, o.tolist()) for p, t, o in self.online],
            "labels_seen": [a.tolist() for a in self.labels_seen[1:]],
            "seconds": time.perf_counter() - self.start, "cpu_seconds": time.process_time() - self.cpu_start}))

    def resume(self) -> None:
        """Continue from the newest checkpoint, if there is one."""
        resumed = self.checkpoints.latest() if self.checkpoints is not None else None
        if resumed is None:
            return
        st, self.phase, result, policy = resumed.state, resumed.step, self.result, self.policy
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(resumed.tensors[f"param/{n}"])
        torch.set_rng_state(resumed.tensors["rng/torch"])
        self.rng.bit_generator.state = st["numpy_rng"]
        self.step, result.history, result.tokens = st["sft_step"], st["history"], st["tokens"]
        result.best_step, result.best_metric = st["best_step"], st["best_metric"]
        if st["best_range"] is not None:
            self.best.update(state={n: resumed.tensors[f"best/{n}"] for n in self.params},
                             **{k: np.asarray(v) if k == "observed" else v for k, v in st["best_range"].items()})
        policy.low, policy.high = st["range"]["low"], st["range"]["high"]
        policy.observed = np.asarray(st["range"]["observed"])
        self.online = [(p, t, np.asarray(o)) for p, t, o in st["online"]]
        self.labels_seen += [np.asarray(a).reshape(-1, len(self.objectives)) for a in st["labels_seen"]]
        result.resumed_from = self.phase
        self.start -= st["seconds"]
        self.cpu_start -= st["cpu_seconds"]

    def offline_phase(self) -> None:
        """Phase 1: fine-tune on the offline data, validated before and after, then checkpoint."""
        self.check()  # the untrained model (the SFT model with tags it never saw) is the fallback
        self.train(self.offline, self.cfg.epochs, self.cfg.lr, "offline")
        self.check()
        self.phase = 1
        self.save()

    def online_round(self, r: int) -> None:
        """One round of multi-objective rejection sampling: generate for targets near the front, keep the
        generations above the quantile on some objective, relabel them, and fine-tune on them plus offline data."""
        cfg, rng, objectives, policy = self.cfg, self.rng, self.objectives, self.policy
        chosen = rng.choice(len(self.unique_prompts), size=min(cfg.online_prompts, len(self.unique_prompts)),
                            replace=False)
        round_prompts = [self.unique_prompts[i] for i in chosen]
        targets = sample_targets(rng, len(round_prompts), np.asarray(policy.low), np.asarray(policy.high))
        texts = self.generate_for(round_prompts, targets, r)
        obtained = self.normalizer(self.ctx.reward(round_prompts, texts).double()).numpy()
        fluent = np.array([bool(t.strip()) and repetition_rate([t]) == 0.0 for t in texts])
        keep = above_quantile(obtained, cfg.quantile) & fluent
        self.online += [(p, t, o) for p, t, o, ok in zip(round_prompts, texts, obtained, keep, strict=True) if ok]
        self.labels_seen.append(obtained[keep])
        # relabelled generations can reach beyond the offline range: the mapping follows the observed range
        seen = np.vstack(self.labels_seen)
        policy.low, policy.high, policy.observed = seen.min(0).tolist(), seen.max(0).tolist(), seen
        mixed = rng.choice(self.origin, size=min(cfg.origin_samples, len(self.origin)), replace=False)
        examples = [self.offline[i] for i in mixed] + [(format_prompt(p, objectives, o, cfg.tags), t)
                                                       for p, t, o in self.online]
        self.result.history.append({
            "step": self.step, "online_round": float(r + 1), "online_generated": float(len(texts)),
            "online_kept": float(keep.sum()), "online_fluent": float(fluent.mean()),
            **{f"online_mean_z/{o}": float(v) for o, v in zip(objectives, obtained.mean(0), strict=True)}})
        self.train(examples, cfg.online_epochs, cfg.online_lr, "online")
        self.check()
        self.phase = r + 2
        self.save()

    def generate_for(self, prompts: list[str], targets: np.ndarray, r: int) -> list[str]:
        """Sampled generations of round `r` for the prompts conditioned on the target rewards."""
        self.model.eval()
        conditioned = [format_prompt(p, self.objectives, t, self.cfg.tags)
                       for p, t in zip(prompts, targets, strict=True)]
        return generate(self.model, self.tokenizer, conditioned,
                        max_new_tokens=int(self.ctx.gen.get("max_new_tokens", 48)), do_sample=True,
                        temperature=self.cfg.temperature, seed=self.ctx.seed + 1000 + r)

    def finish(self) -> tuple[RiCPolicy, TrainResult]:
        """Restore the best validated weights and the reward range they were trained with; pick the mapping."""
        policy, result = self.policy, self.result
        if self.best:
            with torch.no_grad():
                params = dict(self.model.named_parameters())
                for name, value in self.best["state"].items():
                    params[name].copy_(value)
            policy.low, policy.high, policy.observed = self.best["low"], self.best["high"], self.best["observed"]
        self.model.eval()
        if self.cfg.mapping == "auto":
            choose_mapping(policy, self.ctx, self.cfg, result, self.step)
        result.steps = self.step
        result.seconds = time.perf_counter() - self.start
        result.cpu_seconds = time.process_time() - self.cpu_start
        return policy, result


def _conditioned_model(ctx: FitContext, cfg: RiCConfig, normalizer: RunningZScore,
                       z: np.ndarray) -> tuple[torch.nn.Module, object, RiCPolicy]:
    """(model, tokenizer, policy): the base policy (with a LoRA adapter when `lora_rank` is set) conditioned on
    rewards in the observed range of the offline z-scores."""
    model, tokenizer = ctx.load_base()
    if cfg.lora_rank is not None:
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.target_modules,
                          lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    mapping = "linf" if cfg.mapping == "auto" else cfg.mapping
    low, high = z.min(0), z.max(0)  # the observed range the λ → reward mapping works in
    policy = RiCPolicy(model, tokenizer, ctx.objectives, low, high, mapping, normalizer.state_dict(), observed=z,
                       tags=cfg.tags)
    return model, tokenizer, policy


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
