"""Sampling from a checkpoint: load the network, generate, write the grid, images, animation and log.

``inference.py`` is a thin command line over these functions; the notebooks call them directly::

    loaded = load_model("Models/digits-demo", device="cpu")
    images, frames = sample_with_animation(loaded.model, loaded.schedule, loaded.config.sample, num_frames=40)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion.checkpoint import load_checkpoint, resolve_checkpoint
from diffusion.config import Config, SampleConfig, check_sampling, from_dict
from diffusion.device import autocast_dtype, compile_network, precision_name
from diffusion.errors import CheckpointError, ConfigError, UserError
from diffusion.media import atomic_path, image_grid, save_animation, save_png, to_uint8
from diffusion.samplers import ReverseStep, animation_steps, generate_from, timestep_sequence
from diffusion.schedule import NoiseSchedule
from models import UNet, build_model

VIDEO_FORMATS = ("mp4", "gif", "none")


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode, with its schedule and config."""

    model: UNet
    schedule: NoiseSchedule
    config: Config
    step: int  # the training step the checkpoint was written at
    path: Path  # the checkpoint file
    weights: str  # "ema" or "model"


def _mismatch(model: torch.nn.Module, weights: dict[str, Any]) -> str:
    """A one-line account of how ``weights`` differ from ``model``'s parameters and buffers."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in expected if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(expected[k].shape)]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors differ in shape (first: {k} is {list(getattr(weights[k], 'shape', ()))} in the checkpoint, "
            f"{list(expected[k].shape)} in the model)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts)


def load_model(checkpoint: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network of a checkpoint (or a run folder's last.pt) from its stored config.

    The file is loaded with ``weights_only=True``; a missing, foreign, truncated or unsafe file,
    or weights that do not fit the model the stored config describes, raise a one-line
    :class:`CheckpointError`. The weights are stored channels-last when the run trained so, and
    always on the CPU, where that makes sampling faster (docs/results.md#channels-last-sampling-on-cpu).
    """
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping of config sections")
    config = from_dict(state["config"], source=f"{path}: stored config")
    key = "ema" if use_ema else "model"
    weights = state.get(key)
    if not isinstance(weights, dict):
        hint = " (use --no-ema for the raw weights)" if use_ema else ""
        raise CheckpointError(f"{path}: has no '{key}' weights{hint}")
    try:
        model = build_model(config)
    except ConfigError as err:
        raise CheckpointError(f"{path}: stored config: {err}") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, AttributeError) as err:
        detail = _mismatch(model, weights) or str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: the '{key}' weights do not match the model its config describes: {detail}"
        ) from None
    model = model.to(device).eval()
    if config.train.channels_last or torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    schedule = NoiseSchedule.from_config(config.diffusion).to(device)
    return LoadedModel(model, schedule, config, int(state["step"]), path, key)


def sample_with_animation(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    options: SampleConfig,
    num_frames: int = 0,
    *,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """``options.num_samples`` images (N, C, H, W) in [-1, 1], and ``num_frames`` grids (H, W, C)
    uint8 of the samples at the reverse steps chosen by :func:`animation_steps` (none when 0)."""
    shown = animation_steps(timestep_sequence(schedule.timesteps, options.steps), num_frames) if num_frames else []
    wanted = set(shown)
    states: dict[int, torch.Tensor] = {}

    def record(batch: range, step: ReverseStep) -> None:
        if step.index in wanted:
            pixels = to_uint8(step.x)
            buffer = states.setdefault(step.index, torch.empty((options.num_samples, *pixels.shape[1:]), dtype=torch.uint8))
            buffer[batch.start : batch.stop] = pixels

    images = generate_from(
        model, schedule, options,
        device=device, autocast_dtype=autocast_dtype, progress=progress, on_step=record if shown else None,
    )
    grids = {index: image_grid(pixels) for index, pixels in states.items()}
    return images, [grids[index] for index in shown]


def default_out_dir(checkpoint: Path) -> Path:
    """``<run folder>/samples/<timestamp>/`` for a checkpoint in ``<run folder>/checkpoints/``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, n = run / "samples" / stamp, 1
    while out.exists():
        n += 1
        out = run / "samples" / f"{stamp}-{n}"
    return out


def write_samples(
    loaded: LoadedModel,
    options: SampleConfig,
    out_dir: str | Path,
    *,
    precision: str = "auto",
    grid: bool = True,
    save_images: bool = False,
    video: str = "mp4",
    progress: bool = False,
    compile: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Sample from ``loaded`` and write into ``out_dir``: ``grid.png``, ``images/000000.png`` ...
    (with ``save_images``), ``denoise.mp4`` / ``.gif`` (``video``; ``options.frames`` frames at
    ``options.fps``, the final image held a second) and ``samples.json``. With ``compile`` the
    network is compiled by :func:`~diffusion.device.compile_network` (its compilation counts in
    the sampling time; on CUDA replayed as CUDA graphs, activations channels-last).
    Returns the samples (N, C, H, W) in [-1, 1] and that record."""
    check_sampling(options, loaded.schedule.timesteps)
    if video not in VIDEO_FORMATS:
        raise UserError(f"video: expected one of {', '.join(VIDEO_FORMATS)}, got '{video}'")
    out_dir = Path(out_dir)
    device = next(loaded.model.parameters()).device
    dtype = autocast_dtype(precision, device, sampling=True)
    started = time.perf_counter()
    model = compile_network(loaded.model, device) if compile else loaded.model
    images, frames = sample_with_animation(
        model, loaded.schedule, options, options.frames if video != "none" else 0,
        device=device, autocast_dtype=dtype, progress=progress,
    )
    sampling_seconds = time.perf_counter() - started
    files: list[Path] = []
    if grid:
        files.append(save_png(image_grid(images), out_dir / "grid.png"))
    if save_images:
        pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
        for i, picture in enumerate(pixels):
            save_png(picture, out_dir / "images" / f"{i:06d}.png")
        files.append(out_dir / "images")
    if frames:
        files.append(save_animation(frames, out_dir / f"denoise.{video}", fps=options.fps))
    settings = dataclasses.asdict(options)
    if not frames:
        del settings["frames"], settings["fps"]
    record = {
        "checkpoint": str(loaded.path),
        "step": loaded.step,
        "weights": loaded.weights,
        **settings,
        "precision": precision_name(dtype),
        "compiled": compile,
        "device": str(device),
        "sampling_seconds": round(sampling_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "files": [str(f.relative_to(out_dir)) for f in files],
    }
    write_record(record, out_dir)
    return images, record


def write_record(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write, or rewrite with more entries, ``out_dir/samples.json`` (atomically)."""
    path = Path(out_dir) / "samples.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path
