"""Images in [-1, 1] -> uint8 pictures: grids, PNG files and denoising animations (mp4 / gif).

Every file is written through :func:`diffusion.atomic.atomic_path`, so an interrupted run or a
failed encoder never leaves a truncated picture or video under its final name.
"""

from __future__ import annotations

import errno
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from diffusion.atomic import atomic_path


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
            encode_mp4(stack, tmp, fps)
        else:
            iio.imwrite(tmp, stack, extension=".gif", duration=1000 / fps, loop=0)  # duration in ms
    return path


def encode_mp4(stack: np.ndarray, path: Path, fps: int) -> None:
    """Encode (F, H, W, 3) uint8 frames, H and W even, to ``path`` as H.264 yuv420p (crf 10) with
    imageio-ffmpeg's binary. ffmpeg's exit status is checked (imageio's writer ignores it, so a
    failed trailer would leave an unplayable file): a failure raises ``OSError``, with ENOSPC
    when ffmpeg found the disk full."""
    import imageio_ffmpeg

    height, width = stack.shape[1:3]
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264",
        "-pix_fmt", "yuv420p", "-crf", "10", "-f", "mp4", str(path),
    ]
    done = subprocess.run(command, input=np.ascontiguousarray(stack).tobytes(), capture_output=True)
    if done.returncode:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {done.returncode}"]
        full = any("No space left" in line for line in lines)
        raise OSError(errno.ENOSPC if full else errno.EIO, f"ffmpeg failed writing {path}: {lines[-1]}")
