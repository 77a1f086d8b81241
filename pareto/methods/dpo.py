"""The DPO training loop shared by Panacea and the per-weight baseline.

Both minimise an aggregate of per-objective DPO losses over LoRA-style adapters; they differ only in where λ
comes from (sampled per micro-batch and written into the SVD-LoRA layers, or fixed for the whole run).
Regularised the way small DPO runs need: an NLL term on the λ-preferred response, and early stopping on a
held-out front metric scored by the learned reward model, with degenerate (repetitive) checkpoints rejected.
"""

from __future__ import annotations

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
from pareto.front.metrics import Z_REFERENCE, hypervolume
from pareto.methods.checkpoint import Checkpoints, TrainerState
from pareto.models.device import model_device
from pareto.models.policy import encode_pairs, token_logprobs
from pareto.objectives import VectorReward, aggregate_losses
from pareto.objectives.losses import masked_objective_means, per_objective_dpo_losses


@dataclass
class PairSet:
    """Preference pairs as the trainer needs them: texts, per-objective labels, reference log-probs."""

    prompts: list[str]
    responses: list[tuple[str, str]]
    better: torch.Tensor                 # [N, K] in {0, 1, -1}
    ref_logp: torch.Tensor | None = None  # [N, 2], filled by `reference_logps`
    offset: torch.Tensor | None = None    # [N] or [N, K] DPO logit offsets (MODPO's reward margins); None = plain DPO

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
                       self.better[idx], pick(self.ref_logp), pick(self.offset))


def pair_logps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str],
               responses: Sequence[tuple[str, str]], max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Log-probs [B, 2] and response lengths [B, 2] of both responses, in one forward pass of 2B rows (float32, on
    the model's device)."""
    batch = encode_pairs(tokenizer, list(prompts) * 2, [r[0] for r in responses] + [r[1] for r in responses],
                         max_length)
    logp, n = token_logprobs(model, batch)
    b = len(prompts)
    return (torch.stack([logp[:b], logp[b:]], dim=1), torch.stack([n[:b], n[b:]], dim=1),
            int(batch.attention_mask.sum()))


LOGITS_BUDGET = 2**28  # float32 logits per forward when the reference runs over a whole pair set (1 GiB)


@torch.no_grad()
def reference_logps(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet,
                    max_length: int, batch_size: int = 64) -> torch.Tensor:
    """π_ref log-probs [N, 2] of every pair, computed once: the dataset is fixed, so the reference never reruns.

    Computed on the model's device and stored on the CPU (`train_dpo` moves each batch's rows to the model).
    """
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 1)
    # Cap the float32 logits of one forward (2·batch·length·vocab, and as much again for the log-softmax) at
    # LOGITS_BUDGET: a 49k vocabulary at 64 pairs of 192 tokens would need ~10 GiB; the tiny LM is far below.
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (2 * max_length * vocab)))
    out = []
    for s in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch", mininterval=5.0,
                  disable=len(pairs) <= batch_size):
        logp, _, _ = pair_logps(model, tokenizer, pairs.prompts[s:s + batch_size],
                                pairs.responses[s:s + batch_size], max_length)
        out.append(logp.cpu())
    return torch.cat(out)


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
# sample_batch(rng) -> (pair indices [B], labels [B, K]) of one micro-batch; default: uniform pairs, all labels.
BatchSampler = Callable[[np.random.Generator], tuple[np.ndarray, torch.Tensor]]


class Stateful(Protocol):
    """A sampler with state of its own (beyond the trainer's RNG) that a checkpoint must carry."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def train_dpo(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, pairs: PairSet, cfg: DPOConfig,
              *, objectives: Sequence[str], sample_weights: Callable[[np.random.Generator], np.ndarray],
              apply_weights: Callable[[np.ndarray], None], validate: Validator, aggregation: str = "linear",
              max_length: int = 128, seed: int = 0, desc: str = "dpo",
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
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    trainable = list(params.values())
    device = model_device(model)  # everything that meets the model's outputs goes there (no-ops on the CPU)
    optim = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult()

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in params.items()}

    def check(step: int) -> bool:
        """Validate; keep the best eligible state. Returns True when patience has run out."""
        nonlocal best_state, bad_checks
        model.eval()
        metric, info, eligible = validate(step)
        model.train()
        result.history.append({"step": step, "val_metric": metric, "val_eligible": float(eligible), **info})
        if eligible and metric > result.best_metric:
            result.best_metric, result.best_step, best_state, bad_checks = metric, step, snapshot(), 0
        else:
            bad_checks += 1
        return bad_checks >= cfg.patience

    def save(step: int, stopped: bool) -> None:
        tensors = {f"param/{n}": p for n, p in params.items()} | {f"best/{n}": t for n, t in best_state.items()}
        tensors["rng/torch"] = torch.get_rng_state()
        if device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
        checkpoints.save(TrainerState(step, tensors, optim.state_dict(), {
            "numpy_rng": rng.bit_generator.state, "sampler": sampler_state.state_dict() if sampler_state else None,
            "bad_checks": bad_checks, "stopped": stopped, "history": result.history, "best_step": result.best_step,
            "best_metric": result.best_metric, "tokens": result.tokens, "seconds": spent + time.perf_counter() - start,
            "cpu_seconds": cpu_spent + time.process_time() - cpu_start}))

    best_state, bad_checks = snapshot(), 0
    spent = cpu_spent = 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    resumed = checkpoints.latest(device) if checkpoints is not None else None
    if resumed is None:
        check(0)  # the untouched (SFT) model is the fallback: training never returns something worse on validation
        first, stopped = 1, False
    else:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(resumed.tensors[f"param/{n}"])
        best_state = {n: resumed.tensors[f"best/{n}"] for n in params}
        torch.set_rng_state(resumed.tensors["rng/torch"].cpu())
        if "rng/cuda" in resumed.tensors:
            torch.cuda.set_rng_state(resumed.tensors["rng/cuda"].cpu(), device)
        optim.load_state_dict(resumed.optimizer)
        st = resumed.state
        rng.bit_generator.state = st["numpy_rng"]
        if sampler_state is not None:
            sampler_state.load_state_dict(st["sampler"])
        bad_checks, stopped, spent, cpu_spent = st["bad_checks"], st["stopped"], st["seconds"], st["cpu_seconds"]
        result.history, result.best_step, result.best_metric = st["history"], st["best_step"], st["best_metric"]
        result.tokens, result.steps, first = st["tokens"], resumed.step, resumed.step + 1
        result.resumed_from = resumed.step
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=first - 1, desc=desc, unit="step", mininterval=2.0)
    for step in range(first, cfg.max_steps + 1):
        if stopped:
            break
        optim.zero_grad()
        logged: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            if sample_batch is None:
                idx = rng.choice(len(pairs), size=min(cfg.batch_size, len(pairs)), replace=False)
                better = pairs.better[idx]
            else:
                idx, better = sample_batch(rng)
            weights = sample_weights(rng)
            apply_weights(weights)
            lam = torch.tensor(weights, dtype=torch.float32, device=device)
            logp, ntok, tokens = pair_logps(model, tokenizer, [pairs.prompts[i] for i in idx],
                                            [pairs.responses[i] for i in idx], max_length)
            better = better.to(device)
            offset = None if pairs.offset is None else pairs.offset[idx].to(device)
            losses, mask = per_objective_dpo_losses(logp, pairs.ref_logp[idx].to(device), better, cfg.beta, offset)
            per_objective = masked_objective_means(losses, mask)
            loss = aggregate_losses(per_objective, lam, aggregation)
            if cfg.nll_weight > 0:
                # length-normalised NLL of each objective's chosen response, weighted by λ like the DPO terms
                chosen = better.clamp(min=0)
                nll = -(logp.gather(1, chosen) / ntok.gather(1, chosen).clamp(min=1))
                loss = loss + cfg.nll_weight * (masked_objective_means(nll, mask) * lam).sum()
            (loss / cfg.grad_accum).backward()
            result.tokens += tokens
            logged["loss"] = logged.get("loss", 0.0) + loss.item() / cfg.grad_accum
            for name, value, w in zip(objectives, per_objective.tolist(), weights, strict=True):
                logged[f"dpo_loss/{name}"] = logged.get(f"dpo_loss/{name}", 0.0) + value / cfg.grad_accum
                # the λ schedule (mean over the micro-batches of the step), kept with the run
                logged[f"lambda/{name}"] = logged.get(f"lambda/{name}", 0.0) + float(w) / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optim.step()
        result.steps = step
        result.history.append({"step": step, **logged})
        bar.update(1)
        bar.set_postfix(loss=f"{logged['loss']:.3f}", refresh=False)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            stopped = check(step)
        if checkpoints is not None and checkpoints.due(step, last=stopped or step == cfg.max_steps):
            save(step, stopped)
    bar.close()
    result.seconds = spent + time.perf_counter() - start
    result.cpu_seconds = cpu_spent + time.process_time() - cpu_start
    if getattr(cfg, "keep", "best") == "best":  # else the last state: validation only logs (and stops on patience)
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    else:
        result.best_step = result.steps
    model.eval()
    return result


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
