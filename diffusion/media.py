"""Images in [-1, 1] -> uint8 pictures: grids, PNG files and denoising animations (mp4 / gif).

Every file is written atomically: to a temporary name in the same folder, then renamed, so an
interrupted run never leaves a truncated picture or video behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W) in [0, 255], rounded; uint8 input is returned as is."""
    if images.dtype == torch.uint8:
        return images.cpu()
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """A square-ish grid (H, W, C) uint8 of a batch of images in [-1, 1] (or uint8); C is 1 or 3."""
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(to_uint8(images), nrow=nrow, padding=padding, pad_value=255)
    array = grid.permute(1, 2, 0).numpy()
    return array[..., :1] if images.shape[1] == 1 else array


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) that replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, C) uint8 array as a PNG (grayscale when C == 1)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")
    return path


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg is installed and finds an ffmpeg binary (its bundled one, or
    IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    return shutil.which(exe) is not None


def video_frames(frames: Sequence[np.ndarray], fps: int, hold_seconds: float = 1.0, min_side: int = 256) -> np.ndarray:
    """(F, H', W', 3) uint8 frames ready to encode: the frames, then the last one round(fps * hold_seconds) more times.

    Each frame is upscaled by the smallest integer factor (nearest neighbour, so pixels stay sharp)
    that makes its short side >= ``min_side``, then padded with white to even sides (H.264 with
    4:2:0 chroma needs them), and grayscale is repeated to RGB.
    """
    height, width = frames[0].shape[:2]
    scale = max(1, math.ceil(min_side / min(height, width)))
    held = round(fps * hold_seconds)
    stack = np.stack([*frames, *[frames[-1]] * held])
    if stack.ndim == 3:
        stack = stack[..., None]
    stack = stack.repeat(scale, axis=1).repeat(scale, axis=2)
    pad_h, pad_w = stack.shape[1] % 2, stack.shape[2] % 2
    stack = np.pad(stack, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return np.repeat(stack, 3, axis=3) if stack.shape[3] == 1 else stack


def save_animation(frames: Sequence[np.ndarray], path: str | Path, fps: int, hold_seconds: float = 1.0) -> Path:
    """Write frames (H, W, C) uint8 as an animation; the format follows the suffix of ``path``.

    ``.mp4``: H.264, yuv420p, through imageio-ffmpeg (plays everywhere); when no ffmpeg binary is
    found, a ``.gif`` is written next to it instead. ``.gif``: a looping GIF. The frames go
    through :func:`video_frames` (upscaled, even-sized, the last held ``hold_seconds``). Returns
    the path written.
    """
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: expected an .mp4 or .gif path")
    if path.suffix == ".mp4" and not ffmpeg_available():
        path = path.with_suffix(".gif")
    stack = video_frames(frames, fps, hold_seconds)
    with atomic_path(path) as tmp:
        if path.suffix == ".mp4":
            with imageio.get_writer(
                tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                quality=8, macro_block_size=2, ffmpeg_log_level="error",
            ) as writer:
                for frame in stack:
                    writer.append_data(frame)
        else:
            iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0)  # duration in ms
    return path
