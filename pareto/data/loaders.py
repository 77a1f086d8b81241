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
are); a local path is read here, a directory holding one file per split (``<split>.jsonl``, ``.jsonl.gz``,
``.json`` or ``.parquet``; HH-RLHF: ``<subset>/<split>.jsonl.gz``, the hub layout) or a single file. Every bad
row (missing field, label out of range, not UTF-8, not JSON) and an empty file is a one-line `DatasetError`
naming the file, the row and the field, unless the spec says ``bad_rows: skip``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pareto.config import DatasetConfig
from pareto.data.tiny_hh import PreferencePair
from pareto.io import PACKAGE_PREFIX, package_path

EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")
HH_ASSISTANT = "\n\nAssistant:"
HELPSTEER2_RANGE = (0, 4)
ULTRAFEEDBACK_RANGE = (1, 5)


class DatasetError(ValueError):
    """A dataset problem in one line: which file, which row, which field, and what to do."""


class RowError(Exception):
    """A problem with one row; the loader adds the file and row number (or skips the row)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


Row = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Reading rows: local files (here) or the hub (through `datasets`)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSource:
    """Numbered rows of one split from one place; `name` is what errors call it."""

    name: str
    rows: Callable[[], Iterator[tuple[int, Row | RowError]]]


def _parse_split(expr: str) -> tuple[str, str | None]:
    """'train[:95%]' -> ('train', ':95%'); 'test' -> ('test', None)."""
    m = re.match(r"^([^\[]+)(?:\[([^\]]*)\])?$", expr.strip())
    if not m:
        raise DatasetError(f"split {expr!r}: use a name or name[a:b] / name[a%:b%]")
    return m.group(1), m.group(2)


def _slice_bounds(spec: str | None, n: int) -> tuple[int, int]:
    """Rows [start, stop) of n for a `datasets`-style slice ('', ':95%', '95%:', '10:20', '-5%:')."""
    if not spec:
        return 0, n
    if ":" not in spec:
        raise DatasetError(f"split slice [{spec}]: use [a:b] with row numbers or percentages")
    lo, hi = spec.split(":", 1)

    def bound(text: str, default: int) -> int:
        text = text.strip()
        if not text:
            return default
        if text.endswith("%"):
            value = round(n * float(text[:-1]) / 100)
        else:
            value = int(text)
        if value < 0:
            value += n
        return max(0, min(n, value))

    return bound(lo, 0), bound(hi, n)


def _field_with_bad_bytes(obj: Any, prefix: str = "") -> str | None:
    """The first (dotted) field whose text holds undecodable bytes (surrogate escapes), if any."""
    if isinstance(obj, str):
        return prefix or "(value)" if any("\udc80" <= ch <= "\udcff" for ch in obj) else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _field_with_bad_bytes(value, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _field_with_bad_bytes(value, f"{prefix}.{i}" if prefix else str(i))
            if found:
                return found
    return None


def _decode_line(raw: bytes) -> Row | RowError:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Name the field: decode with surrogate escapes, parse, and look for the escaped bytes.
        where = "(line)"
        try:
            where = _field_with_bad_bytes(json.loads(raw.decode("utf-8", "surrogateescape"))) or where
        except ValueError:
            pass
        return RowError(where, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                               "re-encode the file as UTF-8")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError("(line)", f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(row, dict):
        return RowError("(line)", f"expected a JSON object, got {type(row).__name__}")
    return row


def _read_jsonl(path: Path) -> Iterator[tuple[int, Row | RowError]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    yield number, _decode_line(raw.rstrip(b"\r\n"))
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a truncated or damaged download
        raise DatasetError(f"{path}: damaged gzip after line {number} ({type(exc).__name__}: {exc}); download or "
                           "copy the file again (gzip -t checks it)") from None


def _read_json(path: Path) -> Iterator[tuple[int, Row | RowError]]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                           "re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                           "give a JSON list of objects or JSON Lines (.jsonl)") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of row objects, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        yield number, row if isinstance(row, dict) else RowError("(row)", "expected a JSON object")


def _read_parquet(path: Path) -> Iterator[tuple[int, Row | RowError]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetError(f"{path}: not a readable Parquet file ({exc.__class__.__name__}: {exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _local_rows(path: Path, slice_spec: str | None, max_rows: int | None) -> Iterator[tuple[int, Row | RowError]]:
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        reader = _read_jsonl
    elif path.suffix == ".json":
        reader = _read_json
    elif path.suffix == ".parquet":
        reader = _read_parquet
    else:
        raise DatasetError(f"{path}: unsupported file type; use one of {list(EXTENSIONS)}")
    rows = list(reader(path))  # local split files are read whole: slicing needs the row count
    if not rows:
        raise DatasetError(f"{path}: empty file (no rows); give a file with at least one row")
    start, stop = _slice_bounds(slice_spec, len(rows))
    picked = rows[start:stop]
    yield from picked[:max_rows] if max_rows else picked


def _find_split_file(root: Path, name: str) -> Path:
    direct = root / name
    if direct.is_file():
        return direct
    for ext in EXTENSIONS:
        candidate = root / f"{name}{ext}"
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{root}: no file for split {name!r}; expected {name}.jsonl (or "
                       f"{', '.join(name + e for e in EXTENSIONS[1:])})")


def local_root(path: str) -> Path:
    """A local dataset path; `package:<package>/<folder>` is a folder shipped inside an installed package (the
    HH-RLHF test pairs ship as `package:pareto/data/hh_rlhf`)."""
    if path.startswith(PACKAGE_PREFIX):
        try:
            return package_path(path, "task.dataset.path")
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
    return Path(path).expanduser()


def local_source(path: str | Path, split_expr: str, max_rows: int | None = None,
                 subdir: str | None = None) -> RowSource:
    """Rows of one split from local files: a directory with one file per split, or a single file for all."""
    root = local_root(str(path))
    name, slice_spec = _parse_split(split_expr)
    if root.is_file():
        file = root  # one file: every split reads it, told apart by slices
    elif root.is_dir():
        file = _find_split_file(root / subdir if subdir else root, name)
    else:
        raise DatasetError(f"dataset path {str(root)!r} not found; give a directory or a file")
    return RowSource(str(file), lambda: _local_rows(file, slice_spec, max_rows))


def hub_source(hub_id: str, split_expr: str, subset: str | None = None, data_dir: str | None = None,
               revision: str | None = None, max_rows: int | None = None) -> RowSource:
    """Rows of one split through `datasets.load_dataset` (downloads into the HF cache unless offline)."""

    def rows() -> Iterator[tuple[int, Row | RowError]]:
        import datasets

        try:
            ds = datasets.load_dataset(hub_id, name=subset, data_dir=data_dir, split=split_expr,
                                       revision=revision)
        except Exception as exc:  # hub, cache and builder errors have many types; keep the message one line
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            offline = "offline" in reason.lower() or "reach" in reason.lower() or "connection" in reason.lower()
            fix = ("; this machine cannot reach the Hugging Face hub and the dataset is not in the local cache: run "
                   "on a machine with the network (HF_HUB_OFFLINE unset), or download it and set task.dataset.path "
                   "to the files" if offline else "")
            raise DatasetError(f"task.dataset.hub_id={hub_id}: could not load split {split_expr!r}"
                               f"{f' of {data_dir}' if data_dir else ''}: {reason}{fix}") from None
        if len(ds) == 0:
            raise DatasetError(f"{hub_id}[{split_expr}]: empty split (no rows)")
        for number, row in enumerate(ds, start=1):
            if max_rows and number > max_rows:
                return
            yield number, row

    where = f"{hub_id}{'/' + data_dir if data_dir else ''}[{split_expr}]"
    return RowSource(where, rows)


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


def _pairs_two_responses(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                         labels: dict[str, str], allow_missing: bool) -> Parsed:
    """Rows with `prompt`, `response_0`, `response_1` and one binary label column per objective."""
    for number, row in rows:
        if isinstance(row, RowError):
            yield number, row
            continue
        try:
            prompt, r0, r1 = _prompt(row), _text(row, "response_0"), _text(row, "response_1")
            better = tuple(_binary_label(row, labels[o], allow_missing=allow_missing) if o in labels else -1
                           for o in objectives)
        except RowError as err:
            yield number, err
            continue
        yield number, PreferencePair(prompt, r0, r1, better)


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
    for number, row in rows:
        if isinstance(row, RowError):
            yield number, row
            continue
        try:
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
        except RowError as err:
            yield number, err
            continue
        # Put the chosen reply first or second by a hash of the text, so label 0 is not always the winner.
        flip = zlib.crc32(f"{seed}\0{prompt}\0{good}".encode()) & 1
        better = [-1] * len(objectives)
        better[index] = flip
        r0, r1 = (bad, good) if flip else (good, bad)
        yield number, PreferencePair(prompt, r0, r1, tuple(better))


def _pick_pairs(n: int, cap: int | None, rng: random.Random) -> list[tuple[int, int]]:
    combos = list(itertools.combinations(range(n), 2))
    if cap is not None and len(combos) > cap:
        combos = sorted(rng.sample(combos, cap))
    return combos


def _pairs_helpsteer2(rows: Iterable[tuple[int, Row | RowError]], objectives: Sequence[str],
                      labels: dict[str, str], cap: int | None, seed: int) -> Parsed:
    # Responses to one prompt are grouped (HelpSteer2 lists them on consecutive rows; we do not rely on that).
    groups: dict[str, list[tuple[int, str, dict[str, float | None]]]] = {}
    for number, row in rows:
        if isinstance(row, RowError):
            yield number, row
            continue
        try:
            prompt, response = _text(row, "prompt"), _text(row, "response")
            scores = {attr.lstrip("-"): _score(row, attr.lstrip("-"), *HELPSTEER2_RANGE)
                      for attr in labels.values()}
        except RowError as err:
            yield number, err
            continue
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
    for number, row in rows:
        if isinstance(row, RowError):
            yield number, row
            continue
        try:
            prompt = _text(row, "instruction")
            completions = _get(row, "completions")
            if not isinstance(completions, list):
                raise RowError("completions", f"expected a list of completions, got {type(completions).__name__}")
            rated = [_ultrafeedback_ratings(c, k, aspects) for k, c in enumerate(completions)]
        except RowError as err:
            yield number, err
            continue
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
