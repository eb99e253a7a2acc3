"""Sampling from a checkpoint: load the network, generate, write the grid, images, animation and log.

``inference.py`` is a thin command line over these functions; the notebooks call them directly::

    loaded = load_model("Models/digits-demo", device="cpu")
    images, frames = sample_with_animation(loaded.model, loaded.schedule, loaded.config.sample, num_frames=40)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from diffusion.atomic import atomic_path
from diffusion.checkpoint import load_checkpoint
from diffusion.conditioning import Conditions, sampling_conditions
from diffusion.config import Config, SampleConfig, check_sampling, from_dict
from diffusion.data import prepare_dataset, prepare_labeled_dataset
from diffusion.device import autocast_dtype, compile_network, cpu_sampling_layout, precision_name
from diffusion.errors import CheckpointError, ConfigError, UserError
from diffusion.media import image_grid, save_animation, save_png, to_uint8
from diffusion.posthoc_ema import reconstruct
from diffusion.pretrained import resolve
from diffusion.samplers import (
    Reference,
    ReverseStep,
    animation_steps,
    estimate_eps_moments,
    generate_from,
    timestep_sequence,
    uses_channels_last,
)
from diffusion.schedule import NoiseSchedule
from models import UNet, build_model

VIDEO_FORMATS = ("mp4", "gif", "none")
GRID_SAMPLES = 256  # the grid and the animation show about this many samples at most (see chunk_size)


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode, with its schedule and config."""

    model: UNet
    schedule: NoiseSchedule
    config: Config
    step: int  # the training step the checkpoint was written at (0 for imported weights)
    path: Path  # the checkpoint file (for imported weights, their converted copy in the cache)
    weights: str  # "ema" or "model", or "imported" for weights from a diffusers folder or the Hub
    source: str = ""  # where the weights came from: the checkpoint, folder, or Hub id with its commit
    name: str | None = None  # a short name of imported weights (their default output folder)


POSTHOC_FIT_WARNING = 0.1  # the digits runs fit lengths 0.05-0.25 within 4%, 0.28 to 14% (docs/results.md#post-hoc-ema-length)


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


def load_model(
    checkpoint: str | Path,
    *,
    use_ema: bool = True,
    ema_length: float | Literal["config"] | None = "config",
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Rebuild the network of a checkpoint (or a run folder's last.pt) from its stored config.

    ``checkpoint`` may also be a diffusers folder or a Hub id ``org/name[@revision]``
    (:func:`diffusion.pretrained.resolve`: converted once, then loaded as a checkpoint from the
    cache); such weights are a single set, so ``use_ema`` does not apply to them.

    ``ema_length`` picks post-hoc EMA weights (:mod:`diffusion.posthoc_ema`) of that relative
    width, rebuilt from the run folder's snapshots; ``"config"`` means the checkpoint's
    ``sample.ema_length``, and None the ``train.ema_decay`` weights. With ``use_ema=False``
    (the raw weights) it is ignored.

    The file is loaded with ``weights_only=True``; a missing, foreign, truncated or unsafe file,
    or weights that do not fit the model the stored config describes, raise a one-line
    :class:`CheckpointError`. On a GPU the weights are laid out as the run trained; on the CPU
    channels-last, faster for fp32 sampling (:func:`~diffusion.device.cpu_sampling_layout`;
    :func:`write_samples` lays them out for its precision).
    """
    resolved = resolve(checkpoint)
    path = resolved.path
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a mapping of config sections")
    config = from_dict(state["config"], source=f"{path}: stored config")
    key = "ema" if use_ema or resolved.name else "model"
    if ema_length == "config":
        ema_length = config.sample.ema_length
    if ema_length is not None and key == "ema":
        if resolved.name:
            raise CheckpointError(
                f"{resolved.source}: imported weights are a single set; post-hoc EMA needs a run trained with train.posthoc_ema"
            )
        weights, fit = reconstruct(path.parent.parent, int(state["step"]), float(ema_length))
        if fit.relative_error > POSTHOC_FIT_WARNING:
            print(f"warning: the post-hoc EMA snapshots fit an EMA of length {float(ema_length):g} only to"
                  f" {fit.relative_error:.0%} (relative L2 error of its profile)", file=sys.stderr)
        key = f"post-hoc EMA {float(ema_length):g}"
    else:
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
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=cpu_sampling_layout(None))
    elif config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = NoiseSchedule.from_config(config.diffusion).to(device)
    kind = "imported" if resolved.name else key
    return LoadedModel(model, schedule, config, int(state["step"]), path, kind, resolved.source, resolved.name)


def sample_with_animation(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    options: SampleConfig,
    num_frames: int = 0,
    *,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    labels: torch.Tensor | None = None,
    nrow: int | None = None,
    eps_moments: list[float] | None = None,
) -> tuple[torch.Tensor, list[np.ndarray]]:
    """``options.num_samples`` images (N, C, H, W) in [-1, 1], and ``num_frames`` grids (H, W, C)
    uint8 of the samples at the reverse steps chosen by :func:`animation_steps` (none when 0).
    A conditional model samples sample i under ``labels[i]``; the grids have ``nrow`` columns
    (None: square-ish). ``eps_moments``: those of the analytic ddpm variance (:func:`analytic_moments`)."""
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
        labels=labels, eps_moments=eps_moments,
    )
    grids = {index: image_grid(pixels, nrow) for index, pixels in states.items()}
    return images, [grids[index] for index in shown]


def analytic_moments(
    model: torch.nn.Module, schedule: NoiseSchedule, config: Config, options: SampleConfig, autocast_dtype: torch.dtype | None = None
) -> list[float] | None:
    """For the ddpm sampler with the analytic variance, its eps moments
    (:func:`~diffusion.samplers.estimate_eps_moments`) over ``options.analytic_images`` images of
    the training data ``config.data`` (with their labels for a conditional model); else None."""
    if options.sampler != "ddpm" or options.ddpm_variance != "analytic":
        return None
    if config.conditional:
        images, labels = prepare_labeled_dataset(config.data)
        reference = Reference.draw(images, labels.values, options.analytic_images, options.seed)
    else:
        reference = Reference.draw(prepare_dataset(config.data), None, options.analytic_images, options.seed)
    return estimate_eps_moments(model, schedule, options, reference, autocast_dtype)


def default_out_dir(checkpoint: Path | LoadedModel) -> Path:
    """``<run folder>/samples/<timestamp>/`` for a checkpoint in ``<run folder>/checkpoints/``
    (or a :class:`LoadedModel` of one); ``<log.root>/<name>/samples/<timestamp>/`` for imported
    weights. Made here: two runs started in the same second get two folders (``<timestamp>-2``, ...)."""
    if isinstance(checkpoint, LoadedModel) and checkpoint.name:
        run = Path(checkpoint.config.log.root) / checkpoint.name
    else:
        path = checkpoint.path if isinstance(checkpoint, LoadedModel) else checkpoint
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (run / "samples").mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        out = run / "samples" / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()  # atomic: exactly one caller makes it
            return out
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


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
    keep: bool = False,
    conditions: Conditions | None = None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Sample from ``loaded`` and write into ``out_dir``: ``grid.png``, ``images/000000.png`` ...
    (with ``save_images``), ``denoise.mp4`` / ``.gif`` (``video``; ``options.frames`` frames at
    ``options.fps``, the final image held a second) and ``samples.json``. With ``compile`` the
    network is compiled by :func:`~diffusion.device.compile_network` (its compilation counts in
    the sampling time; on CUDA replayed as CUDA graphs, activations channels-last). A conditional
    model samples under ``conditions`` (default: :func:`sampling_conditions`, every class in
    order, one grid row each), guided by ``options.guidance_scale``; both are recorded.

    Samples are made and written in chunks of :func:`chunk_size` images, so any count streams to
    disk in bounded memory; the grid and the animation show the first chunk. Returns every sample
    as uint8 (N, C, H, W) when ``keep`` (else None), and the record."""
    check_sampling(options, loaded.schedule.timesteps)
    if video not in VIDEO_FORMATS:
        raise UserError(f"video: expected one of {', '.join(VIDEO_FORMATS)}, got '{video}'")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: is a file; expected an output folder (--out)")
    if conditions is None:
        conditions = sampling_conditions(loaded.config, options.num_samples)
    labels = conditions.labels if conditions is not None else None
    nrow = conditions.row_length if conditions is not None else None
    device = next(loaded.model.parameters()).device
    dtype = autocast_dtype(precision, device, sampling=True)
    if device.type == "cpu":
        loaded.model.to(memory_format=cpu_sampling_layout(dtype))
    started = time.perf_counter()
    model = compile_network(loaded.model, device) if compile else loaded.model
    moments = analytic_moments(model, loaded.schedule, loaded.config, options, dtype)
    chunk = chunk_size(options.batch_size)
    files: list[Path] = []
    kept: list[torch.Tensor] = []
    frames: list[np.ndarray] = []
    sampling_seconds = 0.0
    for first in range(0, options.num_samples, chunk):
        part = dataclasses.replace(options, num_samples=min(chunk, options.num_samples - first))
        part_labels = labels[first : first + part.num_samples] if labels is not None else None
        begun = started if first == 0 else time.perf_counter()
        if first == 0:
            images, frames = sample_with_animation(
                model, loaded.schedule, part, options.frames if video != "none" else 0,
                device=device, autocast_dtype=dtype, progress=progress, labels=part_labels, nrow=nrow,
                eps_moments=moments,
            )
        else:
            images = generate_from(
                model, loaded.schedule, part, first=first, device=device, autocast_dtype=dtype, progress=progress,
                labels=part_labels, eps_moments=moments,
            )
        sampling_seconds += time.perf_counter() - begun
        pixels = to_uint8(images)
        if first == 0 and grid:
            files.append(save_png(image_grid(pixels, nrow), out_dir / "grid.png"))
        if save_images:
            for i, picture in enumerate(pixels.permute(0, 2, 3, 1).numpy(), start=first):
                save_png(picture, out_dir / "images" / f"{i:06d}.png")
        if keep:
            kept.append(pixels)
    if save_images:
        files.append(out_dir / "images")
    if frames:
        files.append(save_animation(frames, out_dir / f"denoise.{video}", fps=options.fps))
    settings = dataclasses.asdict(options)
    if not frames:
        del settings["frames"], settings["fps"]
    if conditions is None:
        del settings["guidance_scale"]
    record = {
        "checkpoint": str(loaded.path),
        "source": loaded.source,
        "step": loaded.step,
        "weights": loaded.weights,
        **settings,
        **(conditions.record if conditions is not None else {}),
        **({"eps_moments": moments} if moments is not None else {}),
        "precision": precision_name(dtype),
        "channels_last": uses_channels_last(loaded.model),
        "compiled": compile,
        "device": str(device),
        "sampling_seconds": round(sampling_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "files": [str(f.relative_to(out_dir)) for f in files],
        "grid_samples": min(chunk, options.num_samples),
    }
    write_record(record, out_dir)
    return (torch.cat(kept) if keep else None), record


def chunk_size(batch_size: int) -> int:
    """Samples made and written at a time: the smallest multiple of ``batch_size`` (so batches are
    those of one long run) that is at least ``GRID_SAMPLES``."""
    return batch_size * math.ceil(GRID_SAMPLES / batch_size)


def write_record(record: dict[str, Any], out_dir: str | Path) -> Path:
    """Write, or rewrite with more entries, ``out_dir/samples.json`` (atomically)."""
    path = Path(out_dir) / "samples.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path
