"""Checkpoints: atomic writes, safe loads (``weights_only=True``) and one-line errors.

A checkpoint is a dict of tensors and plain Python values with at least ``model`` (state dict),
``ema`` (state dict of the EMA weights), ``step`` and ``config`` (``Config.to_dict()``).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from diffusion.errors import CheckpointError

REQUIRED_KEYS = ("model", "step", "config")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, flush and fsync it, then rename
    it over ``path`` and fsync the folder. A crash at any moment leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: run folder has no checkpoints/last.pt")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def torch_load_safely(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: a pickle that would run code, or a truncated or
    foreign file, raises a one-line :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        if "weights_only" in str(err) or "Unsupported" in str(err):
            reason = "it contains objects other than tensors and plain values (refused: loading it could run code)"
        raise CheckpointError(f"{path}: not a loadable checkpoint: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, LookupError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a checkpoint, or truncated/corrupt ({first})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: a pickle that would run code is refused)."""
    path = resolve_checkpoint(path)
    state = torch_load_safely(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a ddpm checkpoint (expected the keys {', '.join(REQUIRED_KEYS)})")
    return state
