"""Atomic writes: build in a temporary sibling, then rename, so a kill at any moment leaves the previous
good file or directory (or nothing), never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class CheckpointError(ValueError):
    """A weights file that cannot be used, in one line: which file, what is wrong, what to do."""


def read_safetensors(path: str | Path) -> dict:
    """Load a safetensors file, or raise one-line `CheckpointError` (missing, truncated, a pickle, not safetensors).

    Pickled weights (`torch.save`, `.bin`/`.pt`) are refused rather than unpickled: unpickling runs code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; save the model again (safetensors)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol byte / torch.save zip archive
        raise CheckpointError(f"{path}: a pickle/torch.save file, not safetensors; pickles are never loaded "
                              "(they can run code): convert it with safetensors.torch.save_file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:120]}); "
                              "it is truncated or corrupt: restore or re-save it") from None


class StateDirError(RuntimeError):
    """The state folder cannot be created or written (permissions, disk full, a file in the way)."""


def ensure_writable_dir(path: str | Path, what: str = "state folder") -> Path:
    """Create `path` if needed and prove it takes a write (a probe file, written and removed), before any compute.

    Raises a one-line `StateDirError` naming the folder, the OS reason and the fix.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe.")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StateDirError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); free space or fix "
                            "permissions, or point PARETO_HOME (or state_dir in the config) at a writable folder"
                            ) from None
    return path
