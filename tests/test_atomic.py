"""The one atomic-write helper: whole files or none, the user's umask, a full disk as one line
(a real small tmpfs where it can be mounted, an injected failing writer everywhere)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subprocess_env
from test_inference import tiny_run  # noqa: F401 - a fixture
from test_train import DIGITS, TINY

from diffusion.atomic import DiskFullError, write_atomic
from diffusion.checkpoint import save_checkpoint
from diffusion.media import save_animation


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "file.bin"
    write_atomic(path, lambda f: f.write(b"old"))

    def half_then_fail(f):
        f.write(b"half")
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_an_injected_full_disk_is_one_line_naming_the_path_and_the_space(tmp_path):
    """ENOSPC from any writer (here a file object that fills up) -> DiskFullError, old file kept."""
    path = tmp_path / "model.pt"
    state = {"w": torch.zeros(1000)}
    save_checkpoint(state, path)

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(DiskFullError) as err:
        write_atomic(path, lambda f: torch.save(state, FullDisk(f)), needed=4000)
    message = str(err.value)
    assert message.startswith(f"{path}: no space left") and "about 0.0 MB" in message and "free" in message
    assert "\n" not in message and torch.load(path)["w"].shape == (1000,) and os.listdir(tmp_path) == ["model.pt"]


def fake_ffmpeg(tmp_path: Path, message: str) -> Path:
    """An 'ffmpeg' that writes a few bytes to its output and fails as a full disk makes ffmpeg fail."""
    exe = tmp_path / "ffmpeg"
    exe.write_text(f"#!/bin/sh\nfor last; do :; done\nprintf 'half' > \"$last\"\necho '{message}' >&2\nexit 1\n")
    exe.chmod(0o755)
    return exe


@pytest.mark.parametrize(("message", "error"), [
    ("Error writing trailer of out.mp4: No space left on device", DiskFullError),
    ("Error writing trailer of out.mp4: Input/output error", OSError),
])
def test_an_encoder_failure_reaches_the_atomic_write(tmp_path, monkeypatch, message, error):
    """ffmpeg's exit status is checked: no half-written video lands under its final name."""
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake_ffmpeg(tmp_path, message)))
    out = tmp_path / "out" / "denoise.mp4"
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(error, match="denoise.mp4"):
        save_animation(frames, out, fps=2)
    assert not out.parent.exists() or os.listdir(out.parent) == []


@pytest.mark.slow
def test_files_follow_the_umask(tmp_path):
    """Checkpoints, config.yaml, the data cache and sample grids: 0640 under umask 027, not mkstemp's 0600."""
    done = subprocess.run(
        [sys.executable, "train.py", "--config", DIGITS, *TINY, f"log.root={tmp_path}", "log.run_name=run",
         f"data.root={tmp_path / 'Data'}", "train.steps=1", "log.sample_every=1", "log.sample_steps=2"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o027),
    )
    assert done.returncode == 0, done.stderr
    files = [tmp_path / "run" / "config.yaml", tmp_path / "run" / "checkpoints" / "last.pt",
             tmp_path / "run" / "samples" / "step_0000001.png", *(tmp_path / "Data" / "cache").glob("*.npy")]
    assert len(files) == 4
    assert {str(f.relative_to(tmp_path)): oct(f.stat().st_mode & 0o777) for f in files} == {
        str(f.relative_to(tmp_path)): "0o640" for f in files}


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` but ``leave`` bytes."""
    (disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave))


@pytest.mark.slow
def test_a_full_disk_when_sampling_is_one_line_and_leaves_no_broken_video(tiny_run, small_disk):  # noqa: F811
    fill(small_disk, 24_000)  # room for grid.png, not for the video
    done = subprocess.run(
        [sys.executable, "inference.py", "--checkpoint", str(tiny_run), "--out", str(small_disk / "out"),
         "--num-samples", "64", "--frames", "20", "--batch-size", "64"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    line = one_line_error(done)
    assert "no space left on device" in line and str(small_disk / "out") in line
    assert "denoise.mp4" in line and not (small_disk / "out" / "denoise.mp4").exists()
    assert not list((small_disk / "out").glob(".*.tmp"))


@pytest.mark.slow
def test_a_full_disk_when_checkpointing_or_caching_is_one_line(tmp_path, small_disk):
    common = ["train.py", "--config", DIGITS, *TINY, "train.steps=1", "log.run_name=run"]
    checkpoint = subprocess.run(
        [sys.executable, *common, "model.base_channels=32", "model.norm_groups=8",
         f"log.root={small_disk}", f"data.root={tmp_path / 'Data'}"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    line = one_line_error(checkpoint)
    assert f"{small_disk / 'run' / 'checkpoints' / 'step_0000001.pt'}: no space left on device" in line
    assert "needs about" in line
    cache = subprocess.run(
        [sys.executable, *common, "data.image_size=16", "model.image_size=16",
         f"log.root={tmp_path / 'Models'}", f"data.root={small_disk}"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    line = one_line_error(cache)
    assert "no space left on device" in line and str(small_disk / "cache") in line and "needs about 0.5 MB" in line
