"""Training data: a prepared uint8 image cache on disk and a device-side batch iterator.

Decoding JPEGs while a GPU waits is the classic diffusion-training bottleneck, so images are
decoded, cropped and resized once into ``<data.root>/cache/<name>.npy``, a uint8 array of shape
(N, H, W, C) that later runs memory-map. The name encodes the source, the transform, the size and
a hash of the file listing (paths, sizes, modification times), so a changed dataset or transform
gets a new cache instead of a stale one. :class:`BatchIterator` then gathers uint8 batches from
that array, moves them to the device (pinned memory, ``non_blocking``) and does the random
horizontal flip and the [0, 255] -> [-1, 1] scaling there.

Sources (``data.source``):

* ``celeba``: torchvision's CelebA layout under ``data.root`` (train split), preprocessed as the
  DDIM paper's CelebA 64x64 (Song et al. 2021, appendix D.1): the 128x128 crop centred at
  (x=89, y=121) of the 178x218 aligned image, resized (bilinear, antialiased) to ``image_size``;
* ``cifar10``: torchvision's CIFAR-10 train split (50,000 images at 32x32);
* ``folder``: every jpg/jpeg/png/webp/bmp under ``data.root`` (recursively; ``cache/`` excluded),
  centre-cropped to a square and resized;
* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 1 channel), upsampled bilinearly.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import queue
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from diffusion.atomic import remove_stale, write_atomic
from diffusion.config import DataConfig
from diffusion.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_FORMAT = "v1"  # part of every cache key: bump it when the preprocessing changes
# DDIM's CelebA crop: 128x128 centred at (x=89, y=121) -> PIL box (left, upper, right, lower).
CELEBA_BOX = (89 - 64, 121 - 64, 89 + 64, 121 + 64)
CELEBA_FILES = ("img_align_celeba/", "list_eval_partition.txt")


def channels_of(source: str) -> int:
    """Image channels a data source yields: 1 for ``digits``, 3 (RGB) otherwise."""
    return 1 if source == "digits" else 3


# Preparing the cache -------------------------------------------------------------------------


def prepare_dataset(data: DataConfig, rank_zero: bool = True) -> np.ndarray:
    """The dataset as a read-only uint8 array (N, H, W, C), memory-mapped from its cache file.

    The first call builds the cache (decoding with ``data.num_workers`` processes and a progress
    bar); later calls only open it. ``rank_zero=False`` silences progress and messages (other
    processes of a distributed run call it after rank zero has built the cache). The file is
    written atomically, so concurrent or interrupted builds never leave a broken cache.
    """
    root = Path(data.root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: data.root is a file; expected a folder")
    size = data.image_size
    if rank_zero and (root / "cache").is_dir():
        remove_stale(root / "cache")  # left by a build killed while saving
    if data.source in ("celeba", "folder"):
        if data.source == "celeba":
            files, box, transform = _celeba_files(root), CELEBA_BOX, "crop128at89x121"
            base = root / "celeba" / "img_align_celeba"
        else:
            files, box, transform, base = _folder_files(root), None, "centercrop", root
        path = root / "cache" / f"{data.source}-{transform}-{size}px-{_listing_key(base, files, size)}.npy"
        if not path.is_file():
            _build_from_files(path, files, size, box, data.num_workers, rank_zero)
    else:
        images = _digits(size) if data.source == "digits" else _cifar10(root, size)
        key = hashlib.sha1(CACHE_FORMAT.encode() + images.tobytes()).hexdigest()[:16]
        path = root / "cache" / f"{data.source}-bilinear-{size}px-{key}.npy"
        if not path.is_file():
            _save_atomic(path, images)
    return _open_cache(path, size)


def _listing_key(base: Path, files: list[Path], size: int) -> str:
    """Hash of the file listing (relative path, size, mtime) and the cache format."""
    digest = hashlib.sha1(f"{CACHE_FORMAT}\n{size}\n".encode())
    for f in files:
        try:
            st = f.stat()
        except OSError as err:
            raise DataError(f"{f}: cannot read ({err.strerror})") from None
        name = os.fsencode(f.relative_to(base).as_posix())  # file names need not be valid UTF-8
        digest.update(name + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _open_cache(path: Path, size: int) -> np.ndarray:
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        raise DataError(f"{path}: unreadable image cache ({err}); delete it to rebuild") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:3] != (size, size):
        raise DataError(f"{path}: unexpected cache contents {images.dtype} {images.shape}; delete it to rebuild")
    return images


def _save_atomic(path: Path, images: np.ndarray) -> None:
    """``np.save`` through :func:`write_atomic`: a crash never leaves a half-written cache."""
    write_atomic(path, lambda f: np.save(f, images), needed=images.nbytes)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit grayscale (PIL modes ``I;16*`` and ``I``, as 16-bit PNGs
    open) is scaled by 255/65535: PIL's own conversion would clip every value above 255."""
    if img.mode.startswith("I"):
        wide = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.round(wide * (255 / 65535)), 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def _load_image(path: Path, size: int, box: tuple[int, int, int, int] | None) -> tuple[np.ndarray | None, str]:
    """Decode one file to uint8 (size, size, 3): crop ``box`` (default: the centred square), resize.

    Returns (image, "") or (None, reason); runs in the decoding worker processes.
    """
    try:
        with Image.open(path) as img:
            img = to_rgb(img)
            if box is None:  # centred square, rounded as torchvision's CenterCrop
                w, h = img.size
                s = min(w, h)
                left, top = round((w - s) / 2), round((h - s) / 2)
                box = (left, top, left + s, top + s)
            elif box[2] > img.width or box[3] > img.height:
                return None, f"{img.width}x{img.height} is smaller than the crop {box}"
            # Crop first (resize's own box would blend in pixels beyond it), then PIL's bilinear
            # resize, antialiased as torchvision's Resize of PIL images.
            return np.asarray(img.crop(box).resize((size, size), Image.BILINEAR)), ""
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable"
        return None, f"{type(err).__name__}: {err}".splitlines()[0]


def _build_from_files(
    path: Path, files: list[Path], size: int, box: tuple[int, int, int, int] | None, workers: int, verbose: bool
) -> None:
    """Decode ``files`` into the cache ``path``; unreadable files are reported once and skipped."""
    load = functools.partial(_load_image, size=size, box=box)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path.parent) as scratch, _imap(load, files, workers) as results:
        out = np.memmap(scratch, dtype=np.uint8, mode="w+", shape=(len(files), size, size, 3))
        kept = 0
        bar = tqdm(results, total=len(files), desc=f"preparing {path.name}", unit="img", disable=not verbose)
        for file, (image, reason) in zip(files, bar, strict=True):
            if image is None:
                tqdm.write(f"warning: skipping unreadable image {file} ({reason})", file=sys.stderr)
            else:
                out[kept] = image
                kept += 1
        if kept == 0:
            raise DataError(f"{files[0].parent}: none of the {len(files)} images could be read")
        _save_atomic(path, out[:kept])


@contextmanager
def _imap(fn: Callable[[Any], Any], items: list[Any], workers: int) -> Iterator[Iterator[Any]]:
    """``map(fn, items)`` in order, in ``workers`` spawned processes (0: in this process)."""
    if workers == 0:
        yield map(fn, items)
        return
    # The workers start with SIGINT ignored (an ignored signal stays ignored across exec, and
    # Python then keeps it so): Ctrl-C stops only this process, which ends the pool, instead of
    # printing a traceback from every worker.
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        pool = multiprocessing.get_context("spawn").Pool(workers)
    finally:
        if main:
            signal.signal(signal.SIGINT, handler)
    with pool:
        yield pool.imap(fn, items, chunksize=max(1, min(256, len(items) // (8 * workers))))


def _folder_files(root: Path) -> list[Path]:
    """Every image under ``root`` (recursively, sorted; the cache folder excluded)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (data.root with data.source: folder)")
    cache = root / "cache"
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and cache not in p.parents and p.is_file()
    )
    if not files:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return files


def _celeba_files(root: Path) -> list[Path]:
    """The train split of torchvision's CelebA layout under ``root``, downloading it if absent.

    Only the images and ``list_eval_partition.txt`` are needed, and they are used as found:
    torchvision's own check (MD5 of all five annotation files) would redownload the 1.4 GB
    archive for a missing attribute file, so it runs only when the images are absent.
    """
    base = root / "celeba"
    images, partition = base / "img_align_celeba", base / "list_eval_partition.txt"
    if not (images.is_dir() and partition.is_file()):
        _download_celeba(root)
    try:
        rows = [line.split() for line in partition.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise DataError(f"{partition}: cannot read ({err.strerror})") from None
    names = [row[0] for row in rows if len(row) == 2 and row[1] == "0"]  # split 0 = train
    if not names:
        raise DataError(f"{partition}: no train images listed (expected lines '<file>.jpg 0')")
    files = [images / name for name in names]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{images}: {len(missing)} of the {len(files)} train images listed in {partition.name} are missing"
            f" (first: {missing[0].name}); unzip img_align_celeba.zip there again"
        )
    return files


def _download_celeba(root: Path) -> None:
    """torchvision's CelebA download; its failure becomes instructions for a manual download."""
    from torchvision.datasets import CelebA

    base = root / "celeba"
    try:
        CelebA(str(root), split="train", target_type=[], download=True)
    except Exception as err:  # noqa: BLE001 - gdown, network, quota page, MD5 mismatch, bad zip
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"CelebA download failed ({reason}). Google Drive often refuses it: download img_align_celeba.zip"
            f" and list_eval_partition.txt by hand (CelebA page, 'Align&Cropped Images' and 'Eval'),"
            f" unzip the archive so that the images are in {base / 'img_align_celeba'}/ and put"
            f" list_eval_partition.txt in {base}/; or use data.source: folder with data.root set"
            f" to any folder of face images"
        ) from None


def _digits(size: int) -> np.ndarray:
    """scikit-learn's 8x8 digits (values 0..16) upsampled bilinearly to uint8 (1797, size, size, 1)."""
    from sklearn.datasets import load_digits

    small = torch.from_numpy(load_digits().images).float()[:, None] / 16.0
    large = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return (large.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _cifar10(root: Path, size: int) -> np.ndarray:
    """torchvision's CIFAR-10 train split as uint8 (50000, size, size, 3), downloaded if absent."""
    from torchvision.datasets import CIFAR10

    try:
        images = CIFAR10(str(root), train=True, download=True).data
    except Exception as err:  # noqa: BLE001 - network errors, MD5 mismatch, corrupt archive
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"CIFAR-10 download to {root}/cifar-10-batches-py failed ({reason}); fetch cifar-10-python.tar.gz"
            f" from the CIFAR-10 page and extract it into {root}/"
        ) from None
    if size == images.shape[1]:
        return images
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# Batches -----------------------------------------------------------------------------------


class BatchIterator:
    """An endless, resumable stream of training batches (B, C, H, W) in [-1, 1] on ``device``.

    Epoch ``e`` visits the images in the order ``np.random.default_rng([seed, e]).permutation``,
    the same on every process; process ``rank`` of ``world_size`` takes every ``world_size``-th
    image of it (as ``DistributedSampler``), so the shards are disjoint, and drops the last
    partial batch. Whether an image is flipped is drawn from the same generator, so a batch
    depends only on (seed, epoch, index): :meth:`state_dict` (the position of the next batch) is
    all a resumed run needs to continue the identical stream. A background thread gathers the
    next ``prefetch`` batches (uint8, pinned when the device is CUDA) and starts their copies
    while the current step runs; flips and scaling are done on the device.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        random_flip: bool = False,
        channels_last: bool = False,
        prefetch: int = 2,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.random_flip = random_flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.prefetch = prefetch
        self.per_rank = len(images) // world_size
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"the dataset has {len(images)} images: fewer than one batch of {batch_size}"
                f" for each of {world_size} process(es); lower train.batch_size"
            )
        self.epoch = 0
        self.index = 0  # position of the next batch handed out
        self._queue: queue.Queue[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        """Batches per epoch (per process)."""
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if self._thread is not None:
            raise RuntimeError("BatchIterator.load_state_dict must be called before iterating")
        epoch, index = int(state["epoch"]), int(state["index"])
        # A position past the end of an epoch (e.g. train.batch_size was raised) starts the next.
        self.epoch, self.index = (epoch, index) if index < self.batches_per_epoch else (epoch + 1, 0)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's (image indices, flip flags) of ``epoch``, each (batches, batch_size)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.images))
        flips = rng.random(len(self.images)) < 0.5
        mine = slice(self.rank, self.world_size * self.per_rank, self.world_size)
        shape = (self.batches_per_epoch, self.batch_size)
        used = self.batches_per_epoch * self.batch_size
        return order[mine][:used].reshape(shape), flips[mine][:used].reshape(shape)

    def load_batch(self, indices: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """Images ``indices`` as a float batch on the device, ``flips`` mirrored, scaled to [-1, 1].

        A batch is a set: its images are read in file order with the flipped ones first, so the
        flip is one slice operation on the device.
        """
        flips = flips & self.random_flip
        order = np.lexsort((indices, ~flips))
        num_flipped = int(flips.sum())
        pixels = torch.from_numpy(self.images[indices[order]])  # (B, H, W, C) uint8
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            pixels = pixels.pin_memory()
        x = pixels.to(self.device, non_blocking=on_cuda)
        if num_flipped:
            x[:num_flipped] = x[:num_flipped].flip(2)  # mirror the width axis
        x = x.permute(0, 3, 1, 2).to(torch.float32, memory_format=self.memory_format)
        return x.div_(127.5).sub_(1.0)

    def _positions(self, epoch: int, index: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            indices, flips = self.epoch_plan(epoch)
            for i in range(index, self.batches_per_epoch):
                yield indices[i], flips[i]
            epoch, index = epoch + 1, 0

    def _put(self, item: torch.Tensor | BaseException) -> bool:
        """Queue ``item`` for the consumer, waiting while the queue is full; False once
        :meth:`close` asks the thread to stop (so a full queue never blocks ``close``)."""
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, epoch: int, index: int) -> None:
        try:
            for indices, flips in self._positions(epoch, index):
                if not self._put(self.load_batch(indices, flips)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> torch.Tensor:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=max(1, self.prefetch))
            self._thread = threading.Thread(target=self._produce, args=(self.epoch, self.index), daemon=True)
            self._thread.start()
        assert self._queue is not None
        batch = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return batch

    def close(self) -> None:
        """Stop the prefetch thread (idempotent)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
