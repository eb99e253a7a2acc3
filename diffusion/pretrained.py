"""Weights from elsewhere: diffusers folders and Hugging Face Hub ids as checkpoints.

:func:`resolve` turns what a user passes as ``--checkpoint`` into one of our checkpoint files:

* our checkpoint file, or a run folder (its ``checkpoints/last.pt``): itself;
* a diffusers folder in any of the layouts the released models use: a pipeline (``unet/`` and
  ``scheduler/``), flat (``config.json``, the weights and ``scheduler_config.json`` at the top, as
  the 2022 ``google/ddpm-*`` uploads) or a bare UNet (then DDPMScheduler's defaults, with a note);
* a Hub id ``org/name`` or ``org/name@revision``, fetched once by ``huggingface_hub`` into its usual
  cache (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` uses only that cache).

A foreign model is converted once (:mod:`diffusion.diffusers_format`) into a checkpoint under
``$DDPM_CACHE`` (default ``~/.cache/ddpm``), keyed by the files' paths, sizes and modification
times, so a second load is a native checkpoint load. Weights come from safetensors, or from a
``.bin`` through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffusion.checkpoint import resolve_checkpoint, save_checkpoint, torch_load_safely
from diffusion.diffusers_format import from_diffusers, imported_config
from diffusion.errors import CheckpointError

CONVERTER_VERSION = 1  # part of the cache key: bump when a conversion would come out differently
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")
DEFAULT_SCHEDULER = "DDPMScheduler's defaults: T=1000, linear betas 1e-4 to 0.02, fixed_small variance, clip_sample, epsilon"


@dataclass
class Resolved:
    """Where a ``--checkpoint`` argument's weights are, as one of our checkpoint files."""

    path: Path  # our checkpoint: the file itself, or the converted copy in the cache
    source: str  # what was given, made precise: a file, a folder, or a Hub id with its commit
    name: str | None  # a short name for a converted model (its default output folder); None for ours


@dataclass
class DiffusersFolder:
    """The files of a diffusers UNet (+ scheduler) in one of the three layouts."""

    root: Path
    unet_config: Path
    weights: Path
    scheduler_config: Path | None


def cache_dir() -> Path:
    """``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm``, else ``~/.cache/ddpm``."""
    if os.environ.get("DDPM_CACHE"):
        return Path(os.environ["DDPM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm"


def find_diffusers_files(root: Path) -> DiffusersFolder | None:
    """The UNet config, weights and scheduler config of ``root``; None if it holds no UNet config."""
    layouts = (
        (root / "unet", (root / "scheduler" / "scheduler_config.json",)),  # a pipeline
        (root, (root / "scheduler_config.json", root / "scheduler" / "scheduler_config.json")),  # flat, bare UNet
    )
    found = next(((u, s) for u, s in layouts if (u / "config.json").is_file()), None)
    if found is None:
        return None
    unet_dir, schedulers = found
    weights = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None:
        sharded = " (sharded weights are not supported)" if any(unet_dir.glob("*.index.json")) else ""
        raise CheckpointError(f"{unet_dir}: has config.json but no {' or '.join(WEIGHT_FILES)}{sharded}")
    scheduler = next((s for s in schedulers if s.is_file()), None)
    return DiffusersFolder(root, unet_dir / "config.json", weights, scheduler)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a ``.bin`` pickle loaded with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            weights = load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: not a safetensors file, or truncated/corrupt ({first})") from None
    else:
        weights = torch_load_safely(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: expected a state dict of named tensors")
    return weights


def _cache_key(files: DiffusersFolder) -> str:
    h = hashlib.sha256(f"v{CONVERTER_VERSION}".encode())
    for path in (files.unet_config, files.weights, files.scheduler_config):
        if path is not None:
            stat = path.stat()
            h.update(f"|{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def convert(files: DiffusersFolder, name: str, source: str) -> Path:
    """Our checkpoint of a diffusers folder, converted on first use and cached."""
    path = cache_dir() / "converted" / f"{name}-{_cache_key(files)}.pt"
    if path.is_file():
        return path
    scheduler = read_json(files.scheduler_config) if files.scheduler_config else None
    config = imported_config(
        read_json(files.unet_config), scheduler, name,
        {"unet": str(files.unet_config), "scheduler": str(files.scheduler_config or DEFAULT_SCHEDULER)},
    )
    weights = from_diffusers(read_weights(files.weights), config.model, str(files.weights))
    # "ema" and "model" share their tensors, which torch.save stores once.
    state = {"model": weights, "ema": weights, "step": 0, "config": config.to_dict(), "source": source}
    return save_checkpoint(state, path)


def _hub_snapshot(spec: str) -> tuple[Path, str]:
    """The local snapshot folder of Hub id ``org/name[@revision]``, and the id with its commit."""
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    weights = {suffix: [f"{d}diffusion_pytorch_model.{suffix}" for d in ("", "unet/")] for suffix in ("safetensors", "bin")}
    download = f"download it where there is a network (hf download {repo_id}) into the Hugging Face cache"
    for local_only in (True, False):  # the cache first: no request once it has the snapshot
        if not local_only and constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{spec}: no such file or folder, nor a Hub model in the Hugging Face cache {constants.HF_HUB_CACHE}"
                f" (offline: HF_HUB_OFFLINE=1); {download} (HF_HOME / HF_HUB_CACHE), or pass a local folder with its files"
            )
        for suffix in ("safetensors", "bin"):  # only one of the two weight files
            try:
                folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=local_only,
                                                allow_patterns=["*.json", *weights[suffix]]))
            except Exception as err:  # noqa: BLE001 - huggingface_hub's errors vary by version and cause
                if local_only:
                    break
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CheckpointError(
                    f"{spec}: no such file or folder, and could not fetch it from the Hugging Face Hub ({first});"
                    f" {download} {constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE), or pass a local folder with its files"
                ) from None
            if any((folder / w).is_file() for w in [*weights["safetensors"], *weights["bin"]]):
                return folder, f"{repo_id}@{folder.name}"
    raise CheckpointError(f"{spec}: the Hub repository has no {' or '.join(weights['safetensors'] + weights['bin'])}")


def resolve(spec: str | Path) -> Resolved:
    """Our checkpoint file for ``spec``: a checkpoint, run folder, diffusers folder or Hub id."""
    path = Path(spec)
    if path.is_dir():
        files = find_diffusers_files(path)
        if files is None:
            return Resolved(resolve_checkpoint(path), str(path), None)
        name, source = path.resolve().name, str(path.resolve())
    elif path.exists() or not HUB_ID.match(str(spec)):
        return Resolved(resolve_checkpoint(path), str(path), None)
    else:
        folder, source = _hub_snapshot(str(spec))
        files = find_diffusers_files(folder)
        if files is None:
            raise CheckpointError(f"{spec}: the Hub repository has no config.json or unet/config.json of a UNet2DModel")
        name = source.partition("@")[0].replace("/", "--")
    if files.scheduler_config is None:
        print(f"note: {spec} has no scheduler_config.json: using {DEFAULT_SCHEDULER}", file=sys.stderr)
    return Resolved(convert(files, name, source), source, name)
