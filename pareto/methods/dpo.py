"""The DPO training loop of every DPO-trained method (Panacea, per-weight, fixed, MAH-DPO, MODPO, Soups).

Each minimises an aggregate of per-objective DPO losses over LoRA-style adapters, with λ sampled per micro-batch or
fixed for the run; regularised as small DPO runs need: an NLL term on the λ-preferred response, early stopping on a
held-out front metric scored by the learned reward model, degenerate (repetitive) checkpoints rejected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from pareto.config import DPOConfig
from pareto.evaluation import evaluate_grid
from pareto.front.grid import sample_preferences
from pareto.front.metrics import Z_REFERENCE, hypervolume
from pareto.methods.checkpoint import Checkpoints, TrainerState
from pareto.models.device import model_device
from pareto.models.policy import encode_pairs, token_logprobs
from pareto.models.prefix import FrozenPrefix, PrefixStates
from pareto.objectives import VectorReward, aggregate_losses
from pareto.objectives.losses import (
    masked_objective_means,
    per_objective_dpo_losses,
    per_objective_tie_losses,
    reward_distillation_losses,
)

_log = logging.getLogger(__name__)


@dataclass
class PairSet:
    """Preference pairs as the trainer needs them: texts, per-objective labels, reference log-probs."""

    prompts: list[str]
    responses: list[tuple[str, str]]
    better: torch.Tensor                 # [N, K] in {0, 1, -1 (no label, or a tie: `tie_weight`)}
    ref_logp: torch.Tensor | None = None  # [N, 2], filled by `reference_logps`
    offset: torch.Tensor | None = None    # [N] or [N, K] DPO logit offsets (MODPO's reward margins); None = plain DPO
    prefix: PrefixStates | None = None    # what enters the lowest trainable layer (`prepare_reference`)
    rewards: torch.Tensor | None = None   # [N, 2, K] z-scored reward-model scores (`targets: reward_model`)

    @classmethod
    def from_pairs(cls, pairs: Sequence, objective_index: Sequence[int]) -> PairSet:
        """Keep the labels of the chosen objectives (a task may define more than the experiment uses)."""
        better = torch.tensor([[p.better[i] for i in objective_index] for p in pairs], dtype=torch.long)
        return cls([p.prompt for p in pairs], [(p.response_0, p.response_1) for p in pairs], better)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int]) -> PairSet:
        """The pairs at `index` (reference log-probs and offsets travel with them)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx]

        return PairSet([self.prompts[i] for i in idx.tolist()], [self.responses[i] for i in idx.tolist()],
                       self.better[idx], pick(self.ref_logp), pick(self.offset),
                       None if self.prefix is None else self.prefix.subset(idx.tolist()), pick(self.rewards))


class LambdaBatches:
    """Micro-batches drawn for their λ (`batch_by_lambda`): λ first, then each of the batch's pair slots goes to an
    objective j with probability λ_j and takes a pair labelled for j. Where each pair labels one objective (HH-RLHF's
    subsets), uniform batches spend half a vertex's batch on pairs its λ ignores; these spend none. Each objective's
    DPO loss is still the mean over its own pairs, so the λ-aggregated loss estimates the same quantity. `fixed`: a
    per-weight model's one λ (no λ is drawn)."""

    def __init__(self, better: torch.Tensor, batch_size: int, vertex_prob: float,
                 fixed: np.ndarray | None = None) -> None:
        self.better, self.batch_size, self.vertex_prob, self.fixed = better, batch_size, vertex_prob, fixed
        self.labelled = [np.flatnonzero(better[:, j].numpy() >= 0) for j in range(better.shape[1])]
        self.lam = np.full(better.shape[1], 1.0 / better.shape[1]) if fixed is None else np.asarray(fixed)

    def sample_batch(self, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        k = len(self.labelled)
        if self.fixed is None:  # a conditioned model: a fresh λ per micro-batch; a per-weight model keeps its own
            self.lam = sample_preferences(rng, k, 1, self.vertex_prob)[0]
        has_pairs = np.array([len(ix) > 0 for ix in self.labelled], dtype=np.float64)
        share = self.lam * has_pairs
        share = share if share.sum() > 0 else has_pairs  # λ only on objectives without pairs: any labelled ones
        counts = rng.multinomial(self.batch_size, share / share.sum())
        idx = np.concatenate([rng.choice(self.labelled[j], size=min(int(c), len(self.labelled[j])), replace=False)
                              for j, c in enumerate(counts) if c])
        return idx, self.better[idx]

    def sample_weights(self, rng: np.random.Generator) -> np.ndarray:
        return self.lam  # drawn with the batch


def pair_logps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
               responses: Sequence[tuple[str, str]], max_length: int,
               cached: tuple[FrozenPrefix, PrefixStates, Sequence[int]] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Log-probs [B, 2] and response lengths [B, 2] of both responses, in one forward pass of 2B rows (float32, on
    the model's device). `cached` = (frozen prefix, the pair set's prefix states, the pairs' indices in it): run
    only the trainable layers from the cached hidden states."""
    batch = encode_pairs(tokenizer, list(prompts) * 2, [r[0] for r in responses] + [r[1] for r in responses],
                         max_length)
    top = None
    if cached is not None:
        prefix, states, index = cached
        top = prefix, states.batch(index, batch.input_ids.shape[1], model_device(model))
    logp, n = token_logprobs(model, batch, top)
    b = len(prompts)
    return (torch.stack([logp[:b], logp[b:]], dim=1), torch.stack([n[:b], n[b:]], dim=1),
            int(batch.attention_mask.sum()))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per logged step (losses, λ, validation)
    best_step: int = 0
    best_metric: float = float("-inf")
    steps: int = 0
    seconds: float = 0.0      # wall time
    cpu_seconds: float = 0.0  # process CPU time: the compute a method costs, whatever else runs on the machine
    tokens: int = 0
    models: int = 1  # models (adapters) this result trained, e.g. K for Rewarded Soups
    resumed_from: int = 0  # the checkpoint step training resumed from (0: from the start)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


# validate(step) -> (metric, info, eligible): higher metric is better; ineligible checkpoints are never kept.
Validator = Callable[[int], tuple[float, dict, bool]]
# per-objective losses [K], λ [K] -> the one loss to minimise (pareto.objectives.aggregate_losses and its options)
LossAggregate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# sample_batch(rng) -> (pair indices [B], labels [B, K]) of one micro-batch; default: uniform pairs, all labels.
BatchSampler = Callable[[np.random.Generator], tuple[np.ndarray, torch.Tensor]]


class Stateful(Protocol):
    """A sampler with state of its own (beyond the trainer's RNG) that a checkpoint must carry."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class _DPORun:
    """The mutable state of one `train_dpo` call: parameters, optimizer, RNGs, early stopping, the clock."""

    def __init__(self, model: PreTrainedModel, cfg: DPOConfig, rng: np.random.Generator, validate: Validator,
                 checkpoints: Checkpoints | None, sampler_state: Stateful | None) -> None:
        self.model, self.cfg, self.rng, self.validate = model, cfg, rng, validate
        self.checkpoints, self.sampler_state = checkpoints, sampler_state
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.trainable = list(self.params.values())
        self.device = model_device(model)  # everything that meets the model's outputs goes there (CPU: no-ops)
        self.optim = torch.optim.AdamW(self.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.result = TrainResult()
        self.best_state, self.bad_checks = self.snapshot(), 0
        self.spent = self.cpu_spent = 0.0  # time spent before a resume
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def check(self, step: int) -> bool:
        """Validate; keep the best eligible state. Returns True when patience has run out."""
        self.model.eval()
        metric, info, eligible = self.validate(step)
        self.model.train()
        result = self.result
        result.history.append({"step": step, "val_metric": metric, "val_eligible": float(eligible), **info})
        if eligible and metric > result.best_metric:
            result.best_metric, result.best_step, self.best_state, self.bad_checks = metric, step, self.snapshot(), 0
        else:
            self.bad_checks += 1
        return self.bad_checks >= self.cfg.patience

    def seconds(self) -> tuple[float, float]:
        """(wall, CPU) seconds of the whole run, a resumed one's earlier part included."""
        return self.spent + time.perf_counter() - self.start, self.cpu_spent + time.process_time() - self.cpu_start

    def save(self, step: int, stopped: bool) -> None:
        tensors = {f"param/{n}": p for n, p in self.params.items()}
        tensors |= {f"best/{n}": t for n, t in self.best_state.items()}
        tensors["rng/torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        result, (seconds, cpu_seconds) = self.result, self.seconds()
        self.checkpoints.save(TrainerState(step, tensors, self.optim.state_dict(), {
            "numpy_rng": self.rng.bit_generator.state,
            "sampler": self.sampler_state.state_dict() if self.sampler_state else None,
            "bad_checks": self.bad_checks, "stopped": stopped, "history": result.history,
            "best_step": result.best_step, "best_metric": result.best_metric, "tokens": result.tokens,
            "seconds": seconds, "cpu_seconds": cpu_seconds}))

    def restore(self, resumed: TrainerState) -> bool:
        """Load a checkpoint's whole state; returns whether that run had stopped early."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(resumed.tensors[f"param/{n}"])
        self.best_state = {n: resumed.tensors[f"best/{n}"] for n in self.params}
        torch.set_rng_state(resumed.tensors["rng/torch"].cpu())
        if "rng/cuda" in resumed.tensors:
            torch.cuda.set_rng_state(resumed.tensors["rng/cuda"].cpu(), self.device)
        self.optim.load_state_dict(resumed.optimizer)
        st, result = resumed.state, self.result
        self.rng.bit_generator.state = st["numpy_rng"]
        if self.sampler_state is not None:
            self.sampler_state.load_state_dict(st["sampler"])
        self.bad_checks, self.spent, self.cpu_spent = st["bad_checks"], st["seconds"], st["cpu_seconds"]
        result.history, result.best_step, result.best_metric = st["history"], st["best_step"], st["best_metric"]
        result.tokens, result.steps, result.resumed_from = st["tokens"], resumed.step, resumed.step
        return st["stopped"]

    def start_or_resume(self) -> tuple[int, bool]:
        """(first step to train, stopped): resumed from the newest checkpoint, or validated from the start."""
        resumed = self.checkpoints.latest(self.device) if self.checkpoints is not None else None
        if resumed is None:
            if getattr(self.cfg, "keep", "best") == "best":  # with keep: last nothing falls back to step 0
                self.check(0)  # the untouched (SFT) model is the fallback: training never returns worse on validation
            return 1, False
        return resumed.step + 1, self.restore(resumed)

    def finish(self) -> TrainResult:
        """Stop the clock and keep the best validated state (or the last, with `keep: last`)."""
        result = self.result
        result.seconds, result.cpu_seconds = self.seconds()
        if getattr(self.cfg, "keep", "best") == "best":  # else the last state: validation only logs (and stops)
            with torch.no_grad():
                for name, value in self.best_state.items():
                    self.params[name].copy_(value)
        else:
            result.best_step = result.steps
        self.model.eval()
        return result


def _micro_batch_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet, cfg: DPOConfig,
                      idx: np.ndarray, better: torch.Tensor, lam: torch.Tensor, aggregate: LossAggregate,
                      max_length: int, prefix: FrozenPrefix | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss, per-objective DPO losses [K], tokens) of one micro-batch: aggregate_λ(DPO losses) + the λ-weighted NLL
    term. With `prefix`, the forward starts from the pairs' cached hidden states at its first trainable layer."""
    device = lam.device
    cached = None if prefix is None else (prefix, pairs.prefix, idx.tolist())
    logp, ntok, tokens = pair_logps(model, tokenizer, [pairs.prompts[i] for i in idx],
                                    [pairs.responses[i] for i in idx], max_length, cached)
    ref, better = pairs.ref_logp[idx].to(device), better.to(device)
    offset = None if pairs.offset is None else pairs.offset[idx].to(device)
    if pairs.rewards is not None:  # `targets: reward_model`: σ(λ·Δr/τ) is each pair's soft label
        loss, per_objective, chosen = reward_distillation_losses(logp, ref, pairs.rewards[idx].to(device), lam,
                                                                 cfg.beta, cfg.reward_temperature)
        better = chosen.unsqueeze(1).expand(-1, lam.numel())  # the NLL term's response: the λ-preferred one
        mask = torch.ones_like(better, dtype=logp.dtype)
    else:
        losses, mask = per_objective_dpo_losses(logp, ref, better, cfg.beta, offset)
        per_objective = masked_objective_means(losses, mask)
        if cfg.tie_weight > 0:  # pairs tied on an objective keep equal implicit rewards (DPO's tie term)
            ties, tied = per_objective_tie_losses(logp, ref, better, cfg.beta)
            per_objective = per_objective + cfg.tie_weight * masked_objective_means(ties, tied)
        loss = aggregate(per_objective, lam)
    if cfg.nll_weight > 0:
        # length-normalised NLL of each objective's chosen response, weighted by λ like the DPO terms
        chosen = better.clamp(min=0)
        nll = -(logp.gather(1, chosen) / ntok.gather(1, chosen).clamp(min=1))
        loss = loss + cfg.nll_weight * (masked_objective_means(nll, mask) * lam).sum()
    return loss, per_objective, tokens


def _add_to_log(logged: dict[str, float], objectives: Sequence[str], loss: torch.Tensor, per_objective: torch.Tensor,
                weights: np.ndarray, grad_accum: int) -> None:
    """Accumulate one micro-batch's share of the step's logged means (loss, DPO losses, λ)."""
    logged["loss"] = logged.get("loss", 0.0) + loss.item() / grad_accum
    for name, value, w in zip(objectives, per_objective.tolist(), weights, strict=True):
        logged[f"dpo_loss/{name}"] = logged.get(f"dpo_loss/{name}", 0.0) + value / grad_accum
        # the λ schedule (mean over the micro-batches of the step), kept with the run
        logged[f"lambda/{name}"] = logged.get(f"lambda/{name}", 0.0) + float(w) / grad_accum


def train_dpo(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet, cfg: DPOConfig,
              *, objectives: Sequence[str], sample_weights: Callable[[np.random.Generator], np.ndarray],
              apply_weights: Callable[[np.ndarray], None], validate: Validator,
              aggregate: LossAggregate = aggregate_losses, max_length: int = 128, seed: int = 0, desc: str = "dpo",
              sample_batch: BatchSampler | None = None, checkpoints: Checkpoints | None = None,
              sampler_state: Stateful | None = None) -> TrainResult:
    """Minimise aggregate_λ(per-objective DPO losses) + nll_weight · NLL(λ-preferred response).

    `sample_batch` replaces the uniform pair sampler (e.g. MAH-DPO's objective-balanced, objective-tagged batches:
    the labels it returns may mask objectives out). `pairs.offset`, when set, shifts each DPO logit (MODPO).
    Runs on the model's device: labels, offsets, λ and the stored reference log-probs (CPU) of each micro-batch
    move there. Autocast is the caller's: run it inside `Placement.context()`.
    With `checkpoints`, the trainer saves its whole state every `checkpoints.every` steps (and at its last step)
    and first resumes from the newest checkpoint there: the rest of the run is bit-identical to an uninterrupted
    one (`sampler_state`: a sampler's own state, carried along).
    """
    assert pairs.ref_logp is not None, "compute reference_logps first"
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    run = _DPORun(model, cfg, rng, validate, checkpoints, sampler_state)
    result = run.result
    first, stopped = run.start_or_resume()
    model.train()
    prefix, unverified = None, True
    bar = tqdm(total=cfg.max_steps, initial=first - 1, desc=desc, unit="step", mininterval=2.0)
    for step in range(first, cfg.max_steps + 1):
        if stopped:
            break
        run.optim.zero_grad()
        logged: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            if sample_batch is None:
                idx = rng.choice(len(pairs), size=min(cfg.batch_size, len(pairs)), replace=False)
                better = pairs.better[idx]
            else:
                idx, better = sample_batch(rng)
            weights = sample_weights(rng)
            apply_weights(weights)
            if unverified:  # once, with this micro-batch's λ set (validation may have left per-row λ behind)
                prefix, unverified = verified_prefix(model, tokenizer, pairs, max_length), False
            lam = torch.tensor(weights, dtype=torch.float32, device=run.device)
            loss, per_objective, tokens = _micro_batch_loss(model, tokenizer, pairs, cfg, idx, better, lam,
                                                            aggregate, max_length, prefix)
            (loss / cfg.grad_accum).backward()
            result.tokens += tokens
            _add_to_log(logged, objectives, loss, per_objective, weights, cfg.grad_accum)
        torch.nn.utils.clip_grad_norm_(run.trainable, 1.0)
        lr = cfg.learning_rate(step)
        for group in run.optim.param_groups:  # a function of the step: a resumed run gets the same rate
            group["lr"] = lr
        if cfg.lr_schedule != "constant":
            logged["lr"] = lr
        run.optim.step()
        result.steps = step
        result.history.append({"step": step, **logged})
        bar.update(1)
        bar.set_postfix(loss=f"{logged['loss']:.3f}", refresh=False)
        scheduled = (step >= cfg.eval_start and step % cfg.eval_every == 0) or step == cfg.max_steps
        if scheduled and cfg.val_prompts:  # val_prompts 0 (keep: last): no held-out checks at all
            stopped = run.check(step)
        if checkpoints is not None and checkpoints.due(step, last=stopped or step == cfg.max_steps):
            run.save(step, stopped)
    bar.close()
    return run.finish()


def verified_prefix(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet,
                    max_length: int) -> FrozenPrefix | None:
    """The model's frozen prefix when `pairs.prefix` holds its cached hidden states and a forward from them gives the
    full forward's log-probs on the first pairs (per response token within 1e-3 nats in float32, 5e-2 under half
    precision); else None, and training runs full forwards."""
    prefix = FrozenPrefix.of(model)
    if prefix is None or pairs.prefix is None or pairs.prefix.layer != prefix.first:
        return None
    idx = list(range(min(2, len(pairs))))
    args = (model, tokenizer, [pairs.prompts[i] for i in idx], [pairs.responses[i] for i in idx], max_length)
    with torch.no_grad():
        full, ntok, _ = pair_logps(*args)
        fast, _, _ = pair_logps(*args, (prefix, pairs.prefix, idx))
    device = model_device(model)
    half = torch.is_autocast_enabled(device.type) or any(p.dtype != torch.float32 for p in model.parameters())
    gap = float(((full - fast).abs() / ntok.clamp(min=1)).max())
    if not gap <= (5e-2 if half else 1e-3):  # also catches NaN
        _log.warning("frozen-prefix forward differs from the full forward by %.3g nats/token: training runs the "
                     "whole model", gap)
        return None
    return prefix


def front_validator(generate: Callable[[list[str], np.ndarray], list[str]], prompts: Sequence[str],
                    weights: np.ndarray, reward: VectorReward, max_repetition: float,
                    z_reference: float = Z_REFERENCE) -> Validator:
    """Held-out front metric for early stopping, scored by the learned reward model (never the oracle).

    With several λ: hypervolume of the mean z-scored reward vectors against a fixed reference (z_reference
    in every objective). With one λ (a per-weight run): the λ-scalarized mean z-score.
    """
    weights = np.atleast_2d(weights)

    def validate(step: int) -> tuple[float, dict, bool]:
        points = evaluate_grid(generate, prompts, weights, {"rm": reward}, n_samples=0)
        means = np.array([p.mean["rm"] for p in points])
        rep = float(np.mean([p.repetition_rate for p in points]))
        if len(weights) == 1:
            metric = float(means[0] @ weights[0])
        else:
            metric = hypervolume(means, [z_reference] * weights.shape[1])
        return metric, {"val_repetition_rate": rep}, rep <= max_repetition

    return validate
