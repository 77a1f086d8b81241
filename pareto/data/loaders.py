"""Loaders for real preference datasets, all into tiny-hh's `PreferencePair` shape.

One pair, one label per objective (`better[k]` = index of the preferred response, -1 = no label), whatever the
source format:

- ``pku_saferlhf`` (PKU-SafeRLHF / BeaverTails preference data): ``prompt, response_0, response_1`` and one label
  column per objective, e.g. ``helpful: better_response_id``, ``harmless: safer_response_id``.
- ``hh_rlhf`` (Anthropic HH-RLHF): ``chosen`` / ``rejected`` transcripts; the objective comes from the subset
  (``helpful-base`` labels helpful, ``harmless-base`` labels harmless), the other objectives get no label.
- ``helpsteer2`` (NVIDIA HelpSteer2): one response per row with 0–4 attribute scores; responses to the same
  prompt are paired and each objective is labelled by comparing its attribute (``-verbosity``: lower wins).
- ``ultrafeedback`` (openbmb/UltraFeedback): one prompt per row with several completions rated 1–5 (or "N/A")
  per aspect; completions are paired and each objective is labelled by comparing its aspect's rating.
- ``jsonl``: ``prompt, response_0, response_1`` and one label column per objective holding 0, 1, or -1/null.

A hub id goes through `datasets.load_dataset` (split expressions such as ``train[:95%]`` are passed as they
are); a local path is read by `pareto.data.rows`, a directory holding one file per split (``<split>.jsonl``,
``.jsonl.gz``, ``.json`` or ``.parquet``; HH-RLHF: ``<subset>/<split>.jsonl.gz``, the hub layout) or a single file.
Every bad row (missing field, label out of range, not UTF-8, not JSON) and an empty file is a one-line `DatasetError`
naming the file, the row and the field, unless the spec says ``bad_rows: skip``.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pareto.config import DatasetConfig
from pareto.data.rows import (
    EXTENSIONS,
    DatasetError,
    Row,
    RowError,
    RowSource,
    hub_source,
    local_root,
    local_source,
)
from pareto.data.tiny_hh import PreferencePair

# The row readers moved to pareto.data.rows; their public names stay importable from here.
__all__ = ["EXTENSIONS", "HH_ASSISTANT", "DatasetError", "PreferenceDataset", "Row", "RowError", "RowSource",
           "hub_source", "load_preference_dataset", "load_split", "load_task_dataset", "local_root", "local_source",
           "split_hh_transcript"]

HH_ASSISTANT = "\n\nAssistant:"
HELPSTEER2_RANGE = (0, 4)
ULTRAFEEDBACK_RANGE = (1, 5)


# --------------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------------


def _get(row: Row, name: str) -> Any:
    if name not in row:
        raise RowError(name, f"missing field {name!r}; every row needs it (present: {sorted(row)[:8]})")
    return row[name]


def _text(row: Row, name: str) -> str:
    value = _get(row, name)
    if not isinstance(value, str):
        raise RowError(name, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise RowError(name, "empty text")
    return value


def _prompt(row: Row) -> str:
    """The prompt: text, or a chat as a list of {role: user|assistant, content} messages ending on a user turn
    (kept as an HH transcript string, which `pareto.data.chat` turns back into one message per turn)."""
    value = _get(row, "prompt")
    if not isinstance(value, list):
        return _text(row, "prompt")
    from pareto.data.chat import from_messages

    if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "user":
        raise RowError("prompt", "a message list must end with a user message")
    try:
        return from_messages(value)
    except ValueError as exc:
        raise RowError("prompt", f"{exc}; e.g. [{{\"role\": \"user\", \"content\": \"...\"}}]") from None


def _binary_label(row: Row, name: str, allow_missing: bool = False) -> int:
    value = _get(row, name)
    if value is None and allow_missing:
        return -1
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())):
        raise RowError(name, f"label must be 0 or 1{' or -1/null' if allow_missing else ''}, got {value!r}")
    allowed = (0, 1, -1) if allow_missing else (0, 1)
    if int(value) not in allowed:
        raise RowError(name, f"label {value!r} out of range; must be one of {list(allowed)}")
    return int(value)


def _score(row: Row, name: str, lo: int, hi: int) -> float | None:
    """A rating in [lo, hi] (numbers or numeric strings); 'N/A'/None = not rated."""
    value = _get(row, name)
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "NA", "")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(name, f"rating must be a number from {lo} to {hi} or 'N/A', got {value!r}") from None
    if isinstance(value, bool) or not lo <= number <= hi:
        raise RowError(name, f"rating {value!r} out of range; must be from {lo} to {hi}")
    return number


def _compare(a: float | None, b: float | None, lower_is_better: bool = False) -> int:
    """Index of the better of two ratings, -1 for a tie or a missing rating."""
    if a is None or b is None or a == b:
        return -1
    return int((b > a) != lower_is_better)


# --------------------------------------------------------------------------------------------------
# Formats: rows -> pairs. Each yields (row number, pair | RowError).
# --------------------------------------------------------------------------------------------------

Parsed = Iterator[tuple[int, PreferencePair | RowError]]
T = TypeVar("T")


def _each_row(rows: Iterable[tuple[int, Row | RowError]],
              parse: Callable[[Row], T]) -> Iterator[tuple[int, T | RowError]]:
    """Each row through `parse`, numbered; a row that could not be read, or whose `parse` raises a `RowError`,
    gives that error in its place."""
    for number, row in rows:
        if not isinstance(row, RowError):
            try:
                row = parse(row)
            except RowError as err:
                row = err
        yield number, row


def _pairs_two_responses(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                         labels: dict[str, str], allow_missing: bool) -> Parsed:
    """Rows with `prompt`, `response_0`, `response_1` and one binary label column per objective."""

    def parse(row: Row) -> PreferencePair:
        prompt, r0, r1 = _prompt(row), _text(row, "response_0"), _text(row, "response_1")
        better = tuple(_binary_label(row, labels[o], allow_missing=allow_missing) if o in labels else -1
                       for o in objectives)
        return PreferencePair(prompt, r0, r1, better)

    return _each_row(rows, parse)


def _pairs_pku(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
               labels: dict[str, str]) -> Parsed:
    return _pairs_two_responses(rows, objectives, labels, allow_missing=False)


def _pairs_jsonl(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                 labels: dict[str, str]) -> Parsed:
    return _pairs_two_responses(rows, objectives, labels, allow_missing=True)


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """An HH-RLHF transcript -> (dialogue up to and including the last '\\n\\nAssistant:', final reply)."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    return transcript[: cut + len(HH_ASSISTANT)], transcript[cut + len(HH_ASSISTANT):].strip()


def _pairs_hh(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str], objective: str,
              seed: int) -> Parsed:
    index = list(objectives).index(objective)

    def parse(row: Row) -> PreferencePair:
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        try:
            prompt, good = split_hh_transcript(chosen)
        except ValueError as exc:
            raise RowError("chosen", f"{exc}; expected an HH-RLHF transcript") from None
        try:
            prompt_r, bad = split_hh_transcript(rejected)
        except ValueError as exc:
            raise RowError("rejected", f"{exc}; expected an HH-RLHF transcript") from None
        if prompt_r != prompt:
            raise RowError("rejected", "its dialogue before the last Assistant turn differs from 'chosen'")
        if not good or not bad:
            raise RowError("chosen" if not good else "rejected", "the final Assistant reply is empty")
        # Put the chosen reply first or second by a hash of the text, so label 0 is not always the winner.
        flip = zlib.crc32(f"{seed}\0{prompt}\0{good}".encode()) & 1
        better = [-1] * len(objectives)
        better[index] = flip
        r0, r1 = (bad, good) if flip else (good, bad)
        return PreferencePair(prompt, r0, r1, tuple(better))

    return _each_row(rows, parse)


def _pick_pairs(n: int, cap: int | None, rng: random.Random) -> list[tuple[int, int]]:
    combos = list(itertools.combinations(range(n), 2))
    if cap is not None and len(combos) > cap:
        combos = sorted(rng.sample(combos, cap))
    return combos


def _pairs_helpsteer2(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                      labels: dict[str, str], cap: int | None, seed: int) -> Parsed:
    # Responses to one prompt are grouped (HelpSteer2 lists them on consecutive rows; we do not rely on that).
    groups: dict[str, list[tuple[int, str, dict[str, float | None]]]] = {}

    def parse(row: Row) -> tuple[str, str, dict[str, float | None]]:
        prompt, response = _text(row, "prompt"), _text(row, "response")
        return prompt, response, {attr.lstrip("-"): _score(row, attr.lstrip("-"), *HELPSTEER2_RANGE)
                                  for attr in labels.values()}

    for number, item in _each_row(rows, parse):
        if isinstance(item, RowError):
            yield number, item
            continue
        prompt, response, scores = item
        groups.setdefault(prompt, []).append((number, response, scores))
    rng = random.Random(f"helpsteer2/{seed}")
    for prompt, items in groups.items():
        for i, j in _pick_pairs(len(items), cap, rng):
            (n0, r0, s0), (_, r1, s1) = items[i], items[j]
            better = []
            for o in objectives:
                attr = labels.get(o)
                if attr is None:
                    better.append(-1)
                    continue
                name = attr.lstrip("-")
                better.append(_compare(s0[name], s1[name], lower_is_better=attr.startswith("-")))
            if any(b >= 0 for b in better) and r0 != r1:
                yield n0, PreferencePair(prompt, r0, r1, tuple(better))


def _ultrafeedback_ratings(completion: Any, k: int, aspects: set[str]) -> tuple[str, dict[str, float | None]]:
    where = f"completions.{k}"
    if not isinstance(completion, dict):
        raise RowError(where, f"expected an object with 'response' and 'annotations', got {type(completion).__name__}")
    response = completion.get("response")
    if not isinstance(response, str) or not response.strip():
        raise RowError(f"{where}.response", "missing or empty response text")
    annotations = completion.get("annotations")
    if not isinstance(annotations, dict):
        raise RowError(f"{where}.annotations", "missing annotations object")
    ratings: dict[str, float | None] = {}
    for aspect in aspects:
        entry = annotations.get(aspect)
        if not isinstance(entry, dict) or "Rating" not in entry:
            raise RowError(f"{where}.annotations.{aspect}.Rating", "missing rating; expected '1'..'5' or 'N/A'")
        try:
            ratings[aspect] = _score(entry, "Rating", *ULTRAFEEDBACK_RANGE)
        except RowError as err:
            raise RowError(f"{where}.annotations.{aspect}.Rating", str(err)) from None
    return response, ratings


def _pairs_ultrafeedback(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                         labels: dict[str, str], cap: int | None, seed: int) -> Parsed:
    aspects = set(labels.values())
    rng = random.Random(f"ultrafeedback/{seed}")

    def parse(row: Row) -> tuple[str, list[tuple[str, dict[str, float | None]]]]:
        prompt = _text(row, "instruction")
        completions = _get(row, "completions")
        if not isinstance(completions, list):
            raise RowError("completions", f"expected a list of completions, got {type(completions).__name__}")
        return prompt, [_ultrafeedback_ratings(c, k, aspects) for k, c in enumerate(completions)]

    for number, item in _each_row(rows, parse):
        if isinstance(item, RowError):
            yield number, item
            continue
        prompt, rated = item
        for i, j in _pick_pairs(len(rated), cap, rng):
            (r0, s0), (r1, s1) = rated[i], rated[j]
            better = tuple(_compare(s0[labels[o]], s1[labels[o]]) if o in labels else -1 for o in objectives)
            if any(b >= 0 for b in better) and r0 != r1:
                yield number, PreferencePair(prompt, r0, r1, better)


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


@dataclass
class PreferenceDataset:
    """Per-objective preference pairs of a real dataset, split like tiny-hh (train / val / eval)."""

    name: str
    objectives: tuple[str, ...]
    splits: dict[str, list[PreferencePair]]
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows skipped per split (bad_rows: skip)

    def preference_pairs(self, split: str) -> list[PreferencePair]:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not loaded; available: {sorted(self.splits)}")
        return self.splits[split]

    def prompts(self, split: str) -> list[str]:
        """The split's distinct prompts, in first-seen order."""
        return list(dict.fromkeys(p.prompt for p in self.preference_pairs(split)))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "objectives": list(self.objectives), "splits": {}}
        for split, pairs in self.splits.items():
            labelled = {o: sum(p.better[k] >= 0 for p in pairs) for k, o in enumerate(self.objectives)}
            out["splits"][split] = {"pairs": len(pairs), "prompts": len(self.prompts(split)),
                                    "labelled": labelled, "skipped_rows": self.skipped.get(split, 0)}
        return out


def _sources(spec: DatasetConfig, split_expr: str, data_dir: str | None = None) -> RowSource:
    if spec.hub_id is not None:
        return hub_source(spec.hub_id, split_expr, subset=spec.subset, data_dir=data_dir, revision=spec.revision,
                          max_rows=spec.max_rows)
    return local_source(spec.path, split_expr, spec.max_rows, subdir=data_dir)


def _collect(source: RowSource, parsed: Parsed, strict: bool) -> tuple[list[PreferencePair], int]:
    pairs: list[PreferencePair] = []
    skipped = 0
    for number, item in parsed:
        if isinstance(item, RowError):
            if strict:
                raise DatasetError(f"{source.name}: row {number}: field {item.field!r}: {item}")
            skipped += 1
            continue
        pairs.append(item)
    return pairs, skipped


def load_split(spec: DatasetConfig, objectives: Sequence[str], split_expr: str,
               seed: int = 0) -> tuple[list[PreferencePair], int]:
    """Pairs of one source split (`split_expr`, e.g. 'train[:95%]') -> (pairs, rows skipped)."""
    objectives = tuple(objectives)
    strict = spec.bad_rows == "error"
    labels = {o: v for o, v in spec.labels.items() if o in objectives}
    if spec.format == "hh_rlhf":
        pairs: list[PreferencePair] = []
        skipped = 0
        for objective, subsets in labels.items():
            for subset in subsets if isinstance(subsets, list) else [subsets]:
                source = _sources(spec, split_expr, data_dir=subset)
                got, bad = _collect(source, _pairs_hh(source.rows(), objectives, objective, seed), strict)
                pairs += got
                skipped += bad
        return pairs, skipped
    source = _sources(spec, split_expr)
    flat = {o: v for o, v in labels.items() if isinstance(v, str)}
    parsers: dict[str, Callable[[], Parsed]] = {
        "pku_saferlhf": lambda: _pairs_pku(source.rows(), objectives, flat),
        "jsonl": lambda: _pairs_jsonl(source.rows(), objectives, flat),
        "helpsteer2": lambda: _pairs_helpsteer2(source.rows(), objectives, flat, spec.max_pairs_per_prompt, seed),
        "ultrafeedback": lambda: _pairs_ultrafeedback(source.rows(), objectives, flat, spec.max_pairs_per_prompt,
                                                      seed),
    }
    pairs, skipped = _collect(source, parsers[spec.format](), strict)
    if not pairs:
        raise DatasetError(f"{source.name}: no preference pairs (every row was skipped or unlabelled); "
                           "check the file and task.dataset.labels")
    return pairs, skipped


def load_preference_dataset(spec: DatasetConfig, objectives: Sequence[str], seed: int = 0,
                            name: str | None = None) -> PreferenceDataset:
    """Load every split the spec names (train, and val/eval when given) into per-objective pairs."""
    splits: dict[str, list[PreferencePair]] = {}
    skipped: dict[str, int] = {}
    for ours, expr in spec.splits.items():
        splits[ours], skipped[ours] = load_split(spec, objectives, expr, seed)
    return PreferenceDataset(name or spec.source, tuple(objectives), splits, skipped)


def load_task_dataset(task: Any, objectives: Sequence[str], seed: int = 0) -> PreferenceDataset:
    """The dataset of a config's task section (`cfg.task`, which must have `dataset` set)."""
    if task.dataset is None:
        raise DatasetError(f"task {task.name!r} is an embedded task, not a dataset; use pareto.data.load_task")
    return load_preference_dataset(task.dataset, objectives, seed, name=task.name)
