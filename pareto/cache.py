"""Honest stage caches: what a cached artefact was made from, and `pareto cache list / clear`.

A stage's cache entry (`<state>/cache/<stage>-<key>/`) is keyed by everything that makes it: the config sections
that feed the stage, the stage's explicit version (bump it when the stage's output changes meaning), a digest of
pareto's own source (any code change is a miss: a base or reward model built by older code is never reused), and
the versions of the libraries that compute it. The key's parts are written beside the entry (`key.json`), so
`pareto cache list` can say which entries today's code would still use.

Torch-, Ray- and MLflow-free: the CLI lists and clears caches without starting anything.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pareto.config import ExperimentConfig
from pareto.io import folder_bytes

# Bump a stage's version when what it builds changes meaning without a config change (the source digest catches
# any code change too; the version says which stage a change meant, and lets a test simulate one).
# "reference": a pair set's reference log-probs (pareto/methods/reference.py), keyed by content, not config.
STAGE_VERSIONS: dict[str, int] = {"base": 1, "reward": 1, "base_eval": 2, "reference": 1}
# The config sections each stage's artefact depends on (sweeps and runs of one config share the entries).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "base": ("seed", "task", "model"),
    "reward": ("seed", "task", "objectives", "reward_model"),
    "base_eval": ("seed", "task", "objectives", "model", "reward_model", "evaluation"),
}
# Stages built from other stages' artefacts: their key holds their inputs' keys (a rebuilt base re-scores its point).
STAGE_INPUTS: dict[str, tuple[str, ...]] = {"base_eval": ("base", "reward")}
LIBRARIES = ("torch", "transformers", "peft", "datasets", "numpy")
KEY_FILE = "key.json"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 of every Python file of the installed `pareto` package (path and bytes), 16 hex digits."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    return {name: _version(name) for name in LIBRARIES}


def cache_key(cfg: ExperimentConfig, stage: str) -> dict[str, Any]:
    """Everything that makes a stage's artefact, as JSON (written to the entry's key.json)."""
    if stage not in STAGE_VERSIONS:
        raise ValueError(f"unknown cache stage {stage!r}; one of {sorted(STAGE_VERSIONS)}")
    key = {"stage": stage, "stage_version": STAGE_VERSIONS[stage], "config": cfg.digest(*STAGE_SECTIONS[stage]),
           "code": source_digest(), "libraries": library_versions()}
    if stage in STAGE_INPUTS:
        key["inputs"] = {dep: key_digest(cache_key(cfg, dep)) for dep in STAGE_INPUTS[stage]}
    return key


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir(cfg: ExperimentConfig, stage: str) -> Path:
    """Where a stage's artefact is cached: `<state>/cache/<stage>-<digest of its key>`."""
    return cfg.state_path() / "cache" / f"{stage}-{key_digest(cache_key(cfg, stage))}"


@dataclass(frozen=True)
class CacheEntry:
    """One cached artefact under the state folder."""

    path: Path
    kind: str          # a stage name, "model" (converted base models, shipped adapters) or "checkpoint"
    finished: bool     # a stage entry with its DONE marker (a killed stage leaves an unfinished one)
    current: bool | None  # would today's code and libraries still use it? None when the entry cannot say
    bytes: int
    modified: float

    def row(self) -> dict[str, Any]:
        state = "unfinished" if not self.finished else {True: "current", False: "stale", None: "unknown"}[
            self.current]
        return {"kind": self.kind, "name": self.path.name, "state": state,
                "size_mb": round(self.bytes / 2**20, 1),
                "modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.modified)), "path": str(self.path)}


def _stage_entry(path: Path) -> CacheEntry:
    key_file = path / KEY_FILE
    current = None
    if key_file.is_file():
        try:
            key = json.loads(key_file.read_text(encoding="utf-8"))
            current = (key.get("code") == source_digest() and key.get("libraries") == library_versions()
                       and key.get("stage_version") == STAGE_VERSIONS.get(key.get("stage", ""), -1))
        except (OSError, json.JSONDecodeError):
            current = None
    elif (path / "DONE").is_file():
        current = False  # written before caches had keys: built by older code
    kind = path.name.rsplit("-", 1)[0]
    return CacheEntry(path, kind, (path / "DONE").is_file(), current, folder_bytes(path), path.stat().st_mtime)


def _model_entry(path: Path) -> CacheEntry:
    current = None
    source = path / "source.json"
    if source.is_file():  # a converted GGUF base: stale when the libraries that converted it changed
        try:
            record = json.loads(source.read_text(encoding="utf-8"))
            current = all(record.get(lib) == _version(lib) for lib in ("transformers", "gguf") if lib in record)
        except (OSError, json.JSONDecodeError):
            current = None
    return CacheEntry(path, "model", True, current, folder_bytes(path), path.stat().st_mtime)


def _checkpoint_entry(path: Path) -> CacheEntry:
    """A method task's trainer checkpoints: current when written by today's code (a DPO-family folder names the
    source digest it was written by, `<method>-<config>-<code>-<task>`); PPO's folders cannot say (None)."""
    match = re.fullmatch(r".+?-[0-9a-f]{16}-([0-9a-f]{16})-\d+(-.*)?", path.name)
    current = None if match is None else match.group(1) == source_digest()
    return CacheEntry(path, "checkpoint", True, current, folder_bytes(path), path.stat().st_mtime)


def list_entries(state_dir: Path) -> list[CacheEntry]:
    """Every cached stage artefact, model folder and trainer checkpoint folder under `state_dir`, oldest first."""
    entries = [_stage_entry(p) for p in sorted((state_dir / "cache").glob("*")) if p.is_dir()]
    entries += [_model_entry(p) for p in sorted((state_dir / "models").glob("*")) if p.is_dir()]
    entries += [_checkpoint_entry(p) for p in sorted((state_dir / "checkpoints").glob("*")) if p.is_dir()]
    return sorted(entries, key=lambda e: e.modified)


def clear_entries(entries: list[CacheEntry]) -> int:
    """Remove entries; returns the bytes freed. Each entry is renamed aside first, then deleted: a kill midway
    never leaves a half-deleted folder that still looks finished."""
    freed = 0
    for entry in entries:
        if not entry.path.exists():
            continue
        doomed = entry.path.with_name(f".deleting-{entry.path.name}")
        entry.path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        freed += entry.bytes
    return freed
