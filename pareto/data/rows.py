"""Reading the numbered rows of one dataset split: from local files (JSON Lines, optionally gzipped, a JSON list,
or Parquet) or from the Hugging Face hub through `datasets`.

A row that cannot be read (not UTF-8, not JSON, not an object) comes back as a `RowError` in its place, so the
format parsers of `pareto.data.loaders` report it with its row number or skip it; a whole file or split that
cannot be read is a one-line `DatasetError`.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pareto.io import PACKAGE_PREFIX, package_path

EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class DatasetError(ValueError):
    """A dataset problem in one line: which file, which row, which field, and what to do."""


class RowError(Exception):
    """A problem with one row; the loader adds the file and row number (or skips the row)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


Row = dict[str, Any]


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
