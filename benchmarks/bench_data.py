"""Throughput of the data pipeline on a generated image folder: preparing the uint8 cache once
(decode, centre-crop, resize) and then streaming training batches from it with ``BatchIterator``.

    python benchmarks/bench_data.py [--images 4096] [--size 64] [--batch-size 128] [--device cpu] [--threads 1]

The folder holds ``--images`` random JPEGs of 1.5x the training size, so that the cache build
really resizes; it lives in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffusion.cli import Parser, add_device_flag, add_threads_flag, positive_int, set_threads
from diffusion.config import DataConfig
from diffusion.data import BatchIterator, prepare_dataset
from diffusion.device import resolve_device
from diffusion.errors import UserError, run_cli


def write_image_folder(root: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` smooth random RGB JPEGs of ``1.5 * size`` pixels (photo-like, so they compress)."""
    rng = np.random.default_rng(seed)
    side = size * 3 // 2
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((side, side), Image.BILINEAR)
        image.save(root / f"{i:06d}.jpg", quality=90)


def bench_data(
    root: Path, size: int, batch: int, device: torch.device, workers: int, epochs: int = 3
) -> dict[str, float]:
    """Images per second of the cache build and of the batch stream (timed over ``epochs``)."""
    cfg = DataConfig(source="folder", root=str(root), image_size=size, random_flip=True, num_workers=workers)
    start = time.perf_counter()
    images = prepare_dataset(cfg)
    prepare_s = time.perf_counter() - start
    batches = BatchIterator(images, batch, device, random_flip=True)
    try:
        next(batches)  # starts the prefetch thread
        count, start = 0, time.perf_counter()
        for _ in range(epochs * len(batches)):
            count += next(batches).shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stream_s = time.perf_counter() - start
    finally:
        batches.close()
    return {"prepare img/s": len(images) / prepare_s, "batches img/s": count / stream_s}


def main(argv: list[str] | None = None) -> None:
    parser = Parser(__doc__)
    parser.add_argument("--images", type=positive_int, default=4096, help="images in the generated folder (default 4096)")
    parser.add_argument("--size", type=positive_int, default=64, help="training image size in pixels (default 64)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    add_device_flag(parser)
    parser.add_argument("--workers", type=int, default=2, help="processes that build the cache (default 2)")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.images < args.batch_size:
        raise UserError(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    device = resolve_device(args.device, "--device")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = Path(tmp)
        write_image_folder(root / "images", args.images, args.size)
        result = bench_data(root, args.size, args.batch_size, device, args.workers)
    print(f"{args.images} JPEGs -> {args.size}x{args.size}, batch {args.batch_size}, {device}, "
          f"{torch.get_num_threads()} torch thread(s)")
    for name, value in result.items():
        print(f"{name:>14}: {value:,.0f}")


if __name__ == "__main__":
    run_cli(main)
