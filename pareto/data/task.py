"""The one shape every stage reads: a task hands out preference pairs, prompts per split, SFT examples and,
for a synthetic task only, an oracle.

Two sources fill it: the embedded tiny-hh task (oracle-labelled pairs with label noise) and a real preference
dataset (`task.dataset`, any format of `pareto.data.loaders`, no oracle). The stages never ask which one they got.

Splits: `train` pairs train the methods and the reward model; `val` pairs measure the reward model's held-out
accuracy and `val` prompts drive early stopping and the reward normaliser; `eval` prompts score the fronts. A
dataset without a `val` split gets one carved deterministically out of `train` (the last `VAL_SHARE` of its
distinct prompts, whole prompts only, so no prompt is in both).

Length rule for real data (`fit_to_context`), applied once the base model's tokenizer is known, and counted:
- a prompt longer than `max_prompt_tokens` keeps its most recent turns (whole turns are dropped from the start);
  a prompt whose last user turn alone is too long is dropped, with its pairs (`prompts_dropped`, `pairs_dropped`);
- a pair whose prompt + response is longer than `max_prompt_tokens + max_response_tokens` keeps the start of the
  response, cut at that budget without its end-of-turn token (`responses_truncated`), as TRL's DPO does; or, with
  `model.long_responses: drop`, the training pair is dropped (`train_pairs_dropped_long`), so no trained reply
  loses its end.
The embedded task is checked strictly instead: a tiny-hh row that does not fit is a bug (`check_context`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from pareto.config import ExperimentConfig
from pareto.data.chat import drop_leading_turns, to_messages
from pareto.data.tiny_hh import PreferencePair, TinyHH, load_task

VAL_SHARE = 0.05  # of a dataset's train prompts, held out as val when the dataset names no val split
SPLITS = ("train", "val", "eval")


class TaskOracle:
    """A synthetic task's oracle restricted to the experiment's objectives, as a VectorReward."""

    def __init__(self, task: TinyHH, objectives: tuple[str, ...]) -> None:
        self.task, self.names = task, objectives
        self.index = [task.objectives.index(o) for o in objectives]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.task.oracle_scores(prompts, responses)[:, self.index]


@dataclass
class Task:
    """What the stages train and evaluate on; labels are in the experiment's objective order (-1 = no label)."""

    name: str
    objectives: tuple[str, ...]
    pairs: dict[str, list[PreferencePair]]     # train, val (held-out labels)
    prompts: dict[str, list[str]]              # train, val, eval: distinct prompts in a fixed order
    sft_examples: list[tuple[str, str]]        # (prompt, reply) for optional SFT of the base model
    oracle: TaskOracle | None = None           # the synthetic task's true objectives; None for real data
    synthetic: TinyHH | None = None            # the synthetic task itself (oracle front, candidates)
    stats: dict[str, int] = field(default_factory=dict)  # rows loaded, skipped, truncated, dropped

    @property
    def is_synthetic(self) -> bool:
        return self.synthetic is not None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "objectives": list(self.objectives),
                "pairs": {s: len(p) for s, p in self.pairs.items()},
                "prompts": {s: len(p) for s, p in self.prompts.items()}, "stats": dict(self.stats)}


def build_task(cfg: ExperimentConfig) -> Task:
    """The config's task: tiny-hh (by name) or its `task.dataset`, with the experiment's objectives' labels."""
    if cfg.task.dataset is None:
        return _tiny_task(cfg)
    return _dataset_task(cfg)


def _tiny_task(cfg: ExperimentConfig) -> Task:
    synthetic = load_task(cfg.task.name, seed=cfg.seed)
    names = tuple(cfg.objectives)
    idx = [synthetic.objectives.index(o) for o in names]

    def labels(pairs: list[PreferencePair]) -> list[PreferencePair]:
        return [replace(p, better=tuple(p.better[i] for i in idx)) for p in pairs]

    train = labels(synthetic.preference_pairs("train", cfg.task.pairs_per_prompt, cfg.task.label_noise,
                                              seed=cfg.seed))
    # Held-out accuracy is measured against clean oracle labels: the true quality of the reward model.
    val = labels(synthetic.preference_pairs("val", cfg.task.pairs_per_prompt, 0.0, seed=cfg.seed + 1))
    prompts = {s: [p.text for p in synthetic.prompts(s)] for s in SPLITS}
    return Task(synthetic.name, names, {"train": train, "val": val}, prompts, synthetic.sft_examples(),
                oracle=TaskOracle(synthetic, names), synthetic=synthetic)


def _distinct_prompts(pairs: Sequence[PreferencePair], shuffle: bool = False) -> list[str]:
    """A split's distinct prompts; shuffled by a fixed seed for val / eval, so that the first n of them mix every
    subset of the dataset (HH-RLHF lists helpful-base before harmless-base) and are the same for every run seed."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    if shuffle:
        random.Random(f"pareto/prompts/{len(prompts)}").shuffle(prompts)
    return prompts


def _dataset_task(cfg: ExperimentConfig) -> Task:
    from pareto.data.loaders import load_task_dataset

    names = tuple(cfg.objectives)
    ds = load_task_dataset(cfg.task, names, seed=cfg.seed)
    train, val = ds.splits["train"], ds.splits.get("val")
    stats = {f"{split}_rows_skipped": n for split, n in ds.skipped.items()}
    if val is None:  # carve whole prompts off the end of train, deterministically
        order = _distinct_prompts(train)
        held = set(order[len(order) - max(1, round(VAL_SHARE * len(order))):])
        val = [p for p in train if p.prompt in held]
        train = [p for p in train if p.prompt not in held]
    labelled = sum(any(b >= 0 for b in p.better) for p in train)
    if not labelled:
        from pareto.data.loaders import DatasetError

        raise DatasetError(f"task.dataset {cfg.task.dataset.source}: 0 usable training pairs of {len(train)} rows "
                           f"(no row has a preference label for any of {list(names)}: every label missing or a "
                           "tie); check task.dataset.labels maps each objective to its column or subset")
    eval_pairs = ds.splits.get("eval") or val
    sft = list(dict.fromkeys((p.prompt, (p.response_0, p.response_1)[b]) for p in train for b in p.better if b >= 0))
    pairs = {"train": train, "val": val}
    prompts = {"train": _distinct_prompts(train), "val": _distinct_prompts(val, shuffle=True),
               "eval": _distinct_prompts(eval_pairs, shuffle=True)}
    stats.update({f"{s}_pairs": len(p) for s, p in pairs.items()})
    return Task(cfg.task.name, names, pairs, prompts, sft, stats=stats)


# ---- fitting real data into the model's context ---------------------------------------------------------------
def context_budget(cfg: ExperimentConfig, context: int) -> tuple[int, int]:
    """(max prompt tokens, max response tokens): the config's, else split from the model's context (a quarter of
    it, at most 512 tokens, for the response)."""
    response = cfg.model.max_response_tokens or min(512, context // 4)
    prompt = cfg.model.max_prompt_tokens or context - response
    if prompt + response > context:
        from pareto.config import ConfigError

        raise ConfigError(f"model.max_prompt_tokens + model.max_response_tokens = {prompt + response} exceeds the "
                          f"model's context of {context} tokens; lower them")
    return prompt, response


def model_context(model_dir: str | Path, tokenizer: Any) -> int:
    """The base model's context length: its config's max_position_embeddings, else the tokenizer's limit."""
    config = Path(model_dir) / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_position_embeddings")
    else:  # a hub id: its config from the Hugging Face cache (or the hub)
        from transformers import AutoConfig

        try:
            value = getattr(AutoConfig.from_pretrained(str(model_dir)), "max_position_embeddings", None)
        except OSError:
            value = None
    if isinstance(value, int) and value > 0:
        return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def fit_to_context(task: Task, tokenizer: Any, max_prompt_tokens: int, max_response_tokens: int,
                   long_responses: str = "truncate") -> Task:
    """The task with prompts shortened (leading turns dropped) or dropped, counted in `stats` (see module doc).

    Responses are not rewritten: the trainers cut prompt + response at `max_prompt_tokens + max_response_tokens`
    (`encode_pair`); the pairs that will be cut are counted here as `responses_truncated`, or dropped from the
    training split (`long_responses="drop"`, counted as `train_pairs_dropped_long`).
    """
    from pareto.models.policy import prompt_text, response_text

    distinct = list(dict.fromkeys([p.prompt for ps in task.pairs.values() for p in ps]
                                  + [p for ps in task.prompts.values() for p in ps]))
    cache = _fit_prompts(distinct, tokenizer, max_prompt_tokens, prompt_text)

    def fit(prompt: str) -> str | None:
        return cache[prompt]

    stats = dict(task.stats)
    fitted_pairs: dict[str, list[PreferencePair]] = {}
    for split, pairs in task.pairs.items():
        kept = [replace(p, prompt=fp) for p in pairs if (fp := fit(p.prompt)) is not None]
        stats[f"{split}_pairs_dropped"] = len(pairs) - len(kept)
        fitted_pairs[split] = kept
    prompts = {split: [fp for p in ps if (fp := fit(p)) is not None] for split, ps in task.prompts.items()}
    for split, ps in task.prompts.items():
        stats[f"{split}_prompts_dropped"] = len(ps) - len(prompts[split])
    stats["prompts_shortened"] = sum(1 for p, fp in cache.items() if fp is not None and fp != p)
    budget = max_prompt_tokens + max_response_tokens
    train = fitted_pairs["train"]
    if train:
        p_len = [len(x) for x in tokenizer([prompt_text(tokenizer, p.prompt) for p in train],
                                           add_special_tokens=False)["input_ids"]]
        longest = [max(len(a), len(b)) for a, b in zip(
            tokenizer([response_text(tokenizer, p.response_0) for p in train], add_special_tokens=False)["input_ids"],
            tokenizer([response_text(tokenizer, p.response_1) for p in train], add_special_tokens=False)["input_ids"],
            strict=True)]
        over = [a + b > budget for a, b in zip(p_len, longest, strict=True)]
        if long_responses == "drop":
            train = fitted_pairs["train"] = [p for p, cut in zip(train, over, strict=True) if not cut]
            stats["train_pairs_dropped_long"] = sum(over)
            over = []
        stats["train_responses_truncated"] = sum(over)
    sft = [(fp, r) for p, r in task.sft_examples if (fp := fit(p)) is not None]
    if not train:
        from pareto.data.loaders import DatasetError

        raise DatasetError(f"task {task.name}: no training pair fits model.max_prompt_tokens={max_prompt_tokens} "
                           f"and max_response_tokens={max_response_tokens} (long_responses: {long_responses}); "
                           "raise them")
    return replace(task, pairs=fitted_pairs, prompts=prompts, sft_examples=sft, stats=stats)


def _fit_prompts(prompts: list[str], tokenizer: Any, limit: int, render: Any) -> dict[str, str | None]:
    """Each prompt, or its most recent turns that fit `limit` tokens, or None when its last user turn alone does
    not fit. Every candidate is tokenised in one batched call (one call per prompt was ~1 ms each)."""
    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer([render(tokenizer, t) for t in texts],
                                              add_special_tokens=False)["input_ids"]] if texts else []

    out: dict[str, str | None] = {}
    too_long = []
    for prompt, n in zip(prompts, lengths(prompts), strict=True):
        if n <= limit:
            out[prompt] = prompt
        else:
            too_long.append(prompt)
    shorter = {p: list(dict.fromkeys(drop_leading_turns(p, keep) for keep in range(1, len(to_messages(p)))))
               for p in too_long}
    flat = [c for p in too_long for c in shorter[p]]
    fits = dict(zip(flat, (n <= limit for n in lengths(flat)), strict=True))
    for prompt in too_long:
        best = None
        for candidate in shorter[prompt]:  # more turns each time: keep the longest that fits
            if not fits[candidate]:
                break
            best = candidate
        out[prompt] = best
    return out
