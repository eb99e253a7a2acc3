"""The prepared image cache (every source) and the batch iterator, on small real files."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import diffusion.data
from diffusion.config import DataConfig
from diffusion.data import CELEBA_BOX, BatchIterator, prepare_dataset
from diffusion.errors import DataError


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def banded(width: int, height: int, inner: tuple[int, int, int], outer: tuple[int, int, int]) -> np.ndarray:
    """An image of colour ``outer`` whose centred square is colour ``inner``."""
    s = min(width, height)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = outer
    top, left = (height - s) // 2, (width - s) // 2
    image[top : top + s, left : left + s] = inner
    return image


# Sources -----------------------------------------------------------------------------------


def test_digits_cache_is_built_once_and_memory_mapped(tmp_path):
    data = DataConfig(source="digits", root=str(tmp_path), image_size=16)
    images = prepare_dataset(data)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8
    assert images.shape == (1797, 16, 16, 1)
    (cache,) = (tmp_path / "cache").glob("digits-*16px*.npy")
    assert Path(images.filename) == cache

    from sklearn.datasets import load_digits

    first = torch.from_numpy(load_digits().images[:1]).float()[:, None] / 16
    expected = F.interpolate(first, size=(16, 16), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(images[0, :, :, 0], (expected[0, 0] * 255).round().to(torch.uint8).numpy())

    written = cache.stat().st_mtime_ns
    again = prepare_dataset(data, rank_zero=False)
    assert Path(again.filename) == cache and cache.stat().st_mtime_ns == written
    assert not list((tmp_path / "cache").glob(".*")), "no temporary file is left behind"


def test_folder_is_searched_recursively_centre_cropped_and_resized(tmp_path):
    red, blue = (255, 0, 0), (0, 0, 255)
    save_image(tmp_path / "a.png", banded(30, 10, blue, red))  # wide: bands left and right
    save_image(tmp_path / "sub" / "b.JPG", banded(12, 36, blue, red), quality=100, subsampling=0)  # tall
    save_image(tmp_path / "sub" / "deeper" / "c.webp", banded(8, 8, blue, red), lossless=True)
    save_image(tmp_path / "d.bmp", banded(20, 20, blue, red))
    save_image(tmp_path / "e.jpeg", banded(17, 9, blue, red), quality=100, subsampling=0)
    (tmp_path / "notes.txt").write_text("not an image")

    images = prepare_dataset(DataConfig(source="folder", root=str(tmp_path), image_size=4, num_workers=0))
    assert images.shape == (5, 4, 4, 3)
    assert np.abs(images.astype(int) - np.array(blue)).max() <= 3  # only the centred square is left


def test_folder_cache_key_follows_the_file_listing(tmp_path):
    data = DataConfig(source="folder", root=str(tmp_path), image_size=4, num_workers=0)
    save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert len(prepare_dataset(data)) == 1
    save_image(tmp_path / "b.png", np.full((4, 4, 3), 255, np.uint8))
    assert len(prepare_dataset(data)) == 2
    assert len(list((tmp_path / "cache").glob("folder-*.npy"))) == 2
    assert len(prepare_dataset(DataConfig(source="folder", root=str(tmp_path), image_size=2, num_workers=0))) == 2


def test_corrupt_image_is_reported_once_and_skipped(tmp_path, capsys):
    for i in range(3):
        save_image(tmp_path / f"good{i}.png", np.full((6, 6, 3), 40 * i, np.uint8))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    data = DataConfig(source="folder", root=str(tmp_path), image_size=4, num_workers=0)

    images = prepare_dataset(data)
    assert images.shape == (3, 4, 4, 3)
    assert sorted(images[:, 0, 0, 0]) == [0, 40, 80]
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable image") == 1 and str(bad) in err

    prepare_dataset(data)
    assert "skipping" not in capsys.readouterr().err


def test_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="image folder not found") as err:
        prepare_dataset(DataConfig(source="folder", root=str(tmp_path / "missing")))
    assert "\n" not in str(err.value) and "missing" in str(err.value)

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images found") as err:
        prepare_dataset(DataConfig(source="folder", root=str(tmp_path / "empty")))
    assert "\n" not in str(err.value)

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="none of the 1 images could be read"):
        prepare_dataset(DataConfig(source="folder", root=str(tmp_path / "junk"), num_workers=0))


@pytest.mark.slow
def test_decoding_workers_give_the_same_cache(tmp_path, monkeypatch):
    imap, workers = diffusion.data._imap, []
    monkeypatch.setattr(diffusion.data, "_imap", lambda fn, items, n: workers.append(n) or imap(fn, items, n))
    rng = np.random.default_rng(0)
    for i in range(12):
        save_image(tmp_path / "a" / f"{i:02d}.png", rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    serial = np.array(prepare_dataset(DataConfig(source="folder", root=str(tmp_path / "a"), image_size=6, num_workers=0)))
    (tmp_path / "a").rename(tmp_path / "b")  # same files, fresh cache
    for cache in (tmp_path / "b" / "cache").iterdir():
        cache.unlink()
    pooled = prepare_dataset(DataConfig(source="folder", root=str(tmp_path / "b"), image_size=6, num_workers=2))
    np.testing.assert_array_equal(serial, pooled)
    assert workers == [0, 2]  # data.num_workers decoding processes


def fake_celeba(root: Path) -> None:
    """torchvision's CelebA layout: 4 train images (crop box blue), 1 valid and 1 test (red)."""
    base = root / "celeba"
    image = np.zeros((218, 178, 3), np.uint8)
    image[:] = (0, 255, 0)
    left, top, right, bottom = CELEBA_BOX
    lines = []
    for i in range(1, 7):
        split = {5: 1, 6: 2}.get(i, 0)
        image[top:bottom, left:right] = (0, 0, 255) if split == 0 else (255, 0, 0)
        save_image(base / "img_align_celeba" / f"{i:06d}.jpg", image, quality=100, subsampling=0)
        lines.append(f"{i:06d}.jpg {split}")
    (base / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    names = " ".join(f"{i:06d}.jpg" for i in range(1, 7))
    (base / "identity_CelebA.txt").write_text("\n".join(f"{i:06d}.jpg {i}" for i in range(1, 7)) + "\n")
    for name in ("list_attr_celeba.txt", "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt"):
        (base / name).write_text(f"6\nheader\n{names}\n")


def test_celeba_reads_the_torchvision_layout_without_downloading(tmp_path, monkeypatch):
    from torchvision.datasets import CelebA

    def no_download(self):
        raise AssertionError("a download was attempted although the files are present")

    monkeypatch.setattr(CelebA, "download", no_download)
    fake_celeba(tmp_path)
    images = prepare_dataset(DataConfig(source="celeba", root=str(tmp_path), image_size=8, num_workers=0))
    assert images.shape == (4, 8, 8, 3)  # the train split only
    assert np.abs(images.astype(int) - np.array((0, 0, 255))).max() <= 8  # exactly the crop box
    assert list((tmp_path / "cache").glob("celeba-crop128at89x121-8px-*.npy"))


def test_celeba_download_failure_explains_the_manual_download(tmp_path, monkeypatch):
    from torchvision.datasets import CelebA

    def quota_exceeded(self):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(CelebA, "download", quota_exceeded)
    with pytest.raises(DataError) as err:
        prepare_dataset(DataConfig(source="celeba", root=str(tmp_path)))
    message = str(err.value)
    assert "\n" not in message and "File not found or corrupted" in message
    assert str(tmp_path / "celeba" / "img_align_celeba") in message
    assert "img_align_celeba.zip" in message and "list_eval_partition.txt" in message and "source: folder" in message


def test_cifar10_train_split_from_torchvision_files(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    # torchvision checks the MD5 of every file, which fake files cannot match.
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: None)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 2, 3 * 32 * 32), dtype=np.uint8)
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": pixels[i], "labels": [0, 1]}, f)

    images = prepare_dataset(DataConfig(source="cifar10", root=str(tmp_path), image_size=32))
    np.testing.assert_array_equal(images, pixels.reshape(10, 3, 32, 32).transpose(0, 2, 3, 1))
    small = prepare_dataset(DataConfig(source="cifar10", root=str(tmp_path), image_size=16))
    assert small.shape == (10, 16, 16, 3)


def test_cifar10_download_failure_is_one_line(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DataError, match="CIFAR-10 download .* failed \\(Network is unreachable\\)") as err:
        prepare_dataset(DataConfig(source="cifar10", root=str(tmp_path)))
    assert "\n" not in str(err.value)


# Batches -----------------------------------------------------------------------------------


def labelled_images(n: int, size: int = 4) -> np.ndarray:
    """Image i is 200 everywhere but its left column, which is i: identity and flips are visible."""
    images = np.full((n, size, size, 1), 200, np.uint8)
    images[:, :, 0, 0] = np.arange(n)[:, None]
    return images


def decode(batch: torch.Tensor) -> list[tuple[int, bool]]:
    """(image index, flipped?) of every image of a batch made from :func:`labelled_images`."""
    pixels = ((batch[:, 0, 0] + 1) * 127.5).round().long()  # first row, (B, W)
    return [(int(row[-1]), True) if row[0] == 200 else (int(row[0]), False) for row in pixels]


def test_an_epoch_visits_every_image_once_scaled_to_minus_one_one():
    batches = BatchIterator(labelled_images(10), batch_size=3, seed=1)
    assert len(batches) == 3
    seen = [i for _ in range(3) for i, _ in decode(next(batches))]
    assert len(set(seen)) == 9  # the last partial batch is dropped
    batch = next(batches)
    assert batch.dtype == torch.float32 and batch.shape == (3, 1, 4, 4)
    assert batch.max() == 200 / 127.5 - 1 and batch.min() >= -1
    assert batches.state_dict() == {"epoch": 1, "index": 1}
    batches.close()


def test_order_and_flips_follow_the_seed_and_the_epoch():
    def epoch(seed: int, flip: bool, skip: int = 0) -> list[tuple[int, bool]]:
        batches = BatchIterator(labelled_images(64), batch_size=8, seed=seed, random_flip=flip)
        for _ in range(skip * len(batches)):
            next(batches)
        out = [pair for _ in range(len(batches)) for pair in decode(next(batches))]
        batches.close()
        return out

    first = epoch(0, True)
    assert first == epoch(0, True)
    assert first != epoch(1, True) and first != epoch(0, True, skip=1)
    assert 16 < sum(flipped for _, flipped in first) < 48
    assert not any(flipped for _, flipped in epoch(0, False))


def test_processes_get_disjoint_shards():
    images = labelled_images(21)
    shards = [BatchIterator(images, batch_size=2, rank=r, world_size=3, seed=5) for r in range(3)]
    plans = [set(s.epoch_plan(0)[0].ravel()) for s in shards]
    assert all(len(p) == 6 for p in plans)  # 7 images per process, 3 batches of 2
    assert not (plans[0] & plans[1] or plans[0] & plans[2] or plans[1] & plans[2])
    served = [i for i, _ in decode(next(shards[1]))]
    assert set(served) <= plans[1]
    shards[1].close()


def test_resuming_from_state_dict_continues_the_identical_stream():
    images = labelled_images(20)
    reference = BatchIterator(images, batch_size=4, seed=3, random_flip=True)
    stream = [next(reference) for _ in range(12)]  # crosses two epoch boundaries
    reference.close()

    first = BatchIterator(images, batch_size=4, seed=3, random_flip=True)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    first.close()
    resumed = BatchIterator(images, batch_size=4, seed=3, random_flip=True)
    resumed.load_state_dict(state)
    for expected in stream[7:]:
        assert torch.equal(next(resumed), expected)
    resumed.close()

    bigger_batches = BatchIterator(images, batch_size=8, seed=3)
    bigger_batches.load_state_dict({"epoch": 2, "index": 4})  # only 2 batches of 8 an epoch now
    assert bigger_batches.state_dict() == {"epoch": 3, "index": 0}


def test_channels_last_batches_and_too_small_datasets():
    batches = BatchIterator(np.zeros((8, 4, 4, 3), np.uint8), batch_size=2, channels_last=True)
    assert next(batches).is_contiguous(memory_format=torch.channels_last)
    batches.close()
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchIterator(np.zeros((5, 4, 4, 3), np.uint8), batch_size=3, world_size=2)


def test_close_returns_when_a_failure_finds_the_queue_full():
    batches = BatchIterator(labelled_images(10), batch_size=3, seed=1, prefetch=1)
    load, attempts = batches.load_batch, []

    def failing_load(indices, flips):
        attempts.append(indices)
        if len(attempts) == 3:
            raise OSError("disk gone")
        return load(indices, flips)

    batches.load_batch = failing_load
    assert next(batches).shape[0] == 3
    deadline = time.monotonic() + 10  # the thread queues batch 2, then batch 3 fails with the queue full
    while len(attempts) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    closer = threading.Thread(target=batches.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() waited forever on the full queue"
