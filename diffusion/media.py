"""Images in [-1, 1] -> uint8 pictures: grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W) in [0, 255], rounded."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """A square-ish grid (H, W, C) uint8 of a batch of images in [-1, 1]; C is 1 or 3."""
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(to_uint8(images), nrow=nrow, padding=padding, pad_value=255)
    array = grid.permute(1, 2, 0).numpy()
    return array[..., :1] if images.shape[1] == 1 else array


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save an (H, W, C) uint8 array as a PNG (grayscale when C == 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path
