"""Atomic file writes: every file the project makes appears whole under its final name, or not at all.

A writer fills a temporary file next to the target (``.<name>.<pid>.<random>.tmp``); only when it
returns is the file flushed to disk, given the mode the user's umask asks for, and renamed over
the target. An exception from the writer (or from a writer's own subprocess, e.g. ffmpeg, which
the caller must turn into one) removes the temporary file and leaves any old file intact. A full
disk becomes one :class:`DiskFullError` line naming the path and the space it needs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from diffusion.errors import UserError

FULL = 1 << 20  # bytes free below which a failed write is taken for a full disk


class DiskFullError(UserError):
    """No space left on the device for a file (ENOSPC)."""


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def disk_full(path: Path, written: int, needed: int | None) -> DiskFullError:
    """The one-line error for ``path``: the space it needs (``needed`` bytes when known, else more
    than the ``written`` bytes that fitted) and the space free on its file system."""
    try:
        free = _megabytes(shutil.disk_usage(path.parent).free)
    except OSError:
        free = "unknown"
    need = f"about {_megabytes(needed)}" if needed else f"more than the {_megabytes(written)} written"
    return DiskFullError(f"{path}: no space left on device: it needs {need}, {free} is free; free some space and rerun")


def _out_of_space(err: Exception, folder: Path) -> bool:
    """Whether ``err`` comes from a full disk. Writers do not all keep ENOSPC (torch.save raises a
    RuntimeError, numpy an errno-less OSError), so a failure while the file system has less than
    ``FULL`` bytes free counts too."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < FULL
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; it replaces ``path`` when the block
    succeeds. ``needed``: the file's expected size in bytes, for the full-disk message."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file the user makes follows the umask
        os.replace(tmp, path)
        _fsync(path.parent)  # make the rename itself durable
    except Exception as err:
        if _out_of_space(err, path.parent):
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)  # before measuring the free space
            raise disk_full(path, written, needed) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], needed: int | None = None) -> Path:
    """Call ``write(file)`` on a temporary binary file that then replaces ``path`` (:func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path, needed) as tmp, open(tmp, "wb") as f:
        write(f)
    return path


def remove_stale(folder: Path) -> None:
    """Delete the temporary files in ``folder`` left by processes of this machine that are gone
    (killed while writing); those of running processes are theirs to finish."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.split(".")[-3] if tmp.name.count(".") >= 4 else ""
        if pid.isdigit() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
