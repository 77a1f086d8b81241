"""Directories as bytes: models and adapters travel between Ray workers and the driver by value.

Workers of a real cluster share no filesystem with the driver, so a stage returns what it saved as a
{relative path: bytes} mapping and the driver persists it (cache, MLflow artifacts).
"""

from __future__ import annotations

from pathlib import Path

from pareto.io import atomic_dir

Bundle = dict[str, bytes]


def pack(path: str | Path) -> Bundle:
    root = Path(path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unpack(bundle: Bundle, path: str | Path) -> Path:
    """Write a bundle into `path` atomically (temp dir, then rename)."""
    with atomic_dir(path) as tmp:
        for rel, data in bundle.items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"bundle entry {rel!r} escapes its directory")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Path(path)
