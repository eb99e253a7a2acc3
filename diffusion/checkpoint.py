"""Checkpoints: atomic writes, safe loads (``weights_only=True``) and one-line errors.

A checkpoint is a dict of tensors and plain Python values with at least ``model`` (state dict),
``ema`` (state dict of the EMA weights), ``step`` and ``config`` (``Config.to_dict()``).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from diffusion.atomic import write_atomic
from diffusion.errors import CheckpointError

REQUIRED_KEYS = ("model", "step", "config")


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested state (about a checkpoint's size on disk)."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`~diffusion.atomic.write_atomic`)."""
    return write_atomic(path, lambda f: torch.save(state, f), needed=_tensor_bytes(state))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        steps = sorted((path / "checkpoints").glob("step_*.pt"))
        hint = f"; its newest checkpoint is {steps[-1]}: pass that path" if steps else ""
        raise CheckpointError(f"{path}: run folder has no checkpoints/last.pt{hint}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    return path


def torch_load_safely(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: a pickle that would run code, or a truncated or
    foreign file, raises a one-line :class:`CheckpointError`. ``mmap``: tensors are read from
    the file only when used."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        if "weights_only" in str(err) or "Unsupported" in str(err):
            reason = "it contains objects other than tensors and plain values (refused: loading it could run code)"
        raise CheckpointError(f"{path}: not a loadable checkpoint: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, LookupError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a checkpoint, or truncated/corrupt ({first})") from None


def load_saved(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """A file this project wrote with ``torch.save`` (a zip archive), loaded safely."""
    if path.is_file() and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a checkpoint, or a truncated one (torch.save writes a zip archive; this file is not a complete one)"
        )
    return torch_load_safely(path, map_location, mmap)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: a pickle that would run code is refused)."""
    path = resolve_checkpoint(path)
    state = load_saved(path, map_location)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a ddpm checkpoint (expected the keys {', '.join(REQUIRED_KEYS)})")
    return state
