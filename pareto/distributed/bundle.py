"""Directories between Ray workers and the driver: small ones by value (bytes), large ones by reference.

Workers of a real cluster may share no filesystem with the driver, so a small stage output (a LoRA adapter, the
tiny LM, the reward heads) travels as a {relative path: bytes} mapping and the driver persists it (cache, MLflow
artifacts). A model above `resources.by_value_max_mb` never travels through the driver or the object store: it is
written once where every worker reads it (the state folder: local, or shared storage on a cluster) and passed as
its path. `unpack` takes either, so every stage reads models the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pareto.io import atomic_dir, folder_bytes

Bundle = dict[str, bytes]
ModelRef = Bundle | str  # bytes by value, or the path of a folder every worker can read


def pack(path: str | Path) -> Bundle:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def ship(path: str | Path, dest: str | Path, max_bytes: int) -> ModelRef:
    """What a stage returns for the folder it wrote at `path`: its bytes when small, else the folder moved to
    `dest` (a place every worker and the driver can read) and referenced by path."""
    if folder_bytes(path) <= max_bytes:
        return pack(path)
    with atomic_dir(dest) as tmp:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
    return str(Path(dest).resolve())


def unpack(bundle: ModelRef, path: str | Path) -> Path:
    """A bundle written into `path` atomically (temp dir, then rename); a reference is returned as it is."""
    if isinstance(bundle, str):
        ref = Path(bundle)
        if not ref.is_absolute():
            return ref  # a hub id ("owner/name"): every worker loads it from the hub or its cache
        if not ref.is_dir():
            raise FileNotFoundError(f"model folder {bundle} is not readable on this node; put the state folder "
                                    "(state_dir / PARETO_HOME) on storage every Ray node shares")
        return ref
    with atomic_dir(path) as tmp:
        for rel, data in bundle.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"bundle entry {rel!r} escapes its directory")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Path(path)
