"""A hostile but realistic user: racing runs, foreign folders, failed starts, odd files and values.
Every case ends in a finished run or in one line ``error: ...`` with exit code 2; nothing is lost."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, subprocess_env
from PIL import Image
from test_inference import tiny_run  # noqa: F401 - a fixture
from test_train import DIGITS, TINY, cli, folder_overrides, image_folder, tiny

import diffusion.generate
import inference
from diffusion.checkpoint import load_checkpoint
from diffusion.config import DataConfig, load_config
from diffusion.data import _load_image, prepare_dataset
from diffusion.errors import CheckpointError, ConfigError, DataError, UserError
from diffusion.generate import default_out_dir
from diffusion.trainer import train


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", "--config", DIGITS, *TINY, *args], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def error_line(code: int, err: str) -> str:
    """The one error line of a run that had to exit with code 2."""
    lines = [line for line in err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# Run folders -------------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_started_at_once_never_share_a_folder(tmp_path):
    """Same log.run_name: one run wins, the other gets one line; no run name: two folders."""
    common = [f"data.root={tmp_path / 'Data'}", "train.steps=2"]
    prepare_dataset(load_config(DIGITS, [*TINY, *common]).data)  # both find the cache built
    named = [start(*common, f"log.root={tmp_path / 'named'}", "log.run_name=same", f"train.seed={seed}")
             for seed in (0, 1)]
    unnamed = [start(*common, f"log.root={tmp_path / 'unnamed'}", "log.run_name=") for _ in range(2)]
    results = [finish(p) for p in named]
    assert sorted(code for code, _ in results) == [0, 2], results
    (winner,) = [seed for seed, (code, _) in enumerate(results) if code == 0]
    assert "same" in error_line(*results[1 - winner])
    run = tmp_path / "named" / "same"
    assert load_checkpoint(run)["config"]["train"]["seed"] == winner
    assert load_config(run / "config.yaml").train.seed == winner
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert [finish(p)[0] for p in unnamed] == [0, 0]
    assert len(list((tmp_path / "unnamed").iterdir())) == 2


def test_resume_from_a_checkpoint_outside_a_run_folder_starts_a_new_one(tmp_path, capsys):
    run = train(tiny(tmp_path, "train.steps=1"))
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(run / "checkpoints" / "last.pt", mine / "model.pt")
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "checkpoints").mkdir()
    (mine / "checkpoints" / ".draft.tmp").write_text("mine too\n")
    before = sorted(p.relative_to(mine) for p in mine.rglob("*"))

    new_run = train(tiny(tmp_path, "train.steps=2", run="continued"), resume=mine / "model.pt")
    assert sorted(p.relative_to(mine) for p in mine.rglob("*")) == before
    assert (mine / "config.yaml").read_text() == "my own notes\n"
    assert (mine / "checkpoints" / ".draft.tmp").is_file()
    assert new_run == tmp_path / "Models" / "continued" and load_checkpoint(new_run)["step"] == 2
    assert f"continuing it in a new run folder {new_run}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_checkpoint_can_be_rerun(tmp_path, capsys):
    args = ["--config", DIGITS, *TINY, f"log.root={tmp_path}", "log.run_name=run", f"data.root={tmp_path / 'Data'}",
            "train.steps=3", "train.warmup_steps=0"]
    done = cli(*args, "train.lr=1e30", timeout=300)
    assert done.returncode == 1 and "non-finite" in done.stderr and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    resumed = cli(*args, "--resume", timeout=300)
    assert "before its first checkpoint; start it again without --resume" in error_line(resumed.returncode, resumed.stderr)
    again = cli(*args, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "reusing this run folder" in again.stderr and load_checkpoint(tmp_path / "run")["step"] == 3
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1  # the failed start's events are gone


def test_bad_values_are_refused_before_the_run_folder_exists(tmp_path):
    for override in ("train.seed=-5", f"train.seed={2**40}"):
        with pytest.raises(ConfigError, match="train.seed: expected a seed from 0 to 4294967295"):
            tiny(tmp_path, override)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ConfigError, match=f"{not_a_folder}: log.root is a file"):
        train(tiny(tmp_path, f"log.root={not_a_folder}"))
    with pytest.raises(DataError, match=f"{not_a_folder}: data.root is a file"):
        train(tiny(tmp_path, f"data.root={not_a_folder}"))
    assert not (tmp_path / "Models").exists()


def test_resume_messages_for_a_non_checkpoint_and_a_missing_last_pt(tmp_path):
    with pytest.raises(CheckpointError, match="README.md: not a checkpoint") as err:
        train(tiny(tmp_path), resume=ROOT / "README.md")
    assert "run code" not in str(err.value)
    run = train(tiny(tmp_path, "train.steps=2", "train.checkpoint_every=1"))
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match=f"newest checkpoint is {run / 'checkpoints' / 'step_0000002.pt'}"):
        train(tiny(tmp_path, "train.steps=3"), resume=run)


# Config files ------------------------------------------------------------------------------


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 5\nlog:\n  root: x\ntrain:\n  steps: 500000\n")
    with pytest.raises(ConfigError, match=f"{path}: duplicate key 'train' at lines 1 and 5"):
        load_config(path)
    path.write_text("train:\n  lr: 1.0e-4\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr' at lines 2 and 3"):
        load_config(path)


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("log:\n  run_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{path}: not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize("override", ["train.lr=nan", "train.weight_decay=nan", "train.lr=inf", "train.grad_clip=.nan",
                                      "diffusion.beta_end=-.inf", "sample.eta=nan"])
def test_every_number_must_be_finite(tmp_path, override):
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]}: expected a finite number"):
        tiny(tmp_path, override)


# Data --------------------------------------------------------------------------------------


def test_16_bit_pngs_are_scaled_by_their_bit_depth(tmp_path):
    gradient = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(gradient).save(tmp_path / "wide.png")
    image, reason = _load_image(tmp_path / "wide.png", 32, None)
    assert reason == "" and image.shape == (32, 32, 3)
    expected = np.round(gradient / 257.0)
    assert np.abs(image[..., 0].astype(int) - expected).max() <= 1 and (image[..., 0] == 255).mean() < 0.01


def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    folder = image_folder(tmp_path / "images", 2)
    os.rename(folder / "000.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    data = DataConfig(source="folder", root=str(folder), image_size=8, num_workers=0)
    assert prepare_dataset(data).shape == (2, 8, 8, 3)


def test_an_empty_cache_file_is_one_line_and_stale_temporaries_go(tmp_path):
    data = DataConfig(source="digits", root=str(tmp_path), image_size=8)
    (cache,) = [Path(prepare_dataset(data).filename)]
    cache.write_bytes(b"")
    with pytest.raises(DataError, match="unreadable image cache .*; delete it to rebuild"):
        prepare_dataset(data)
    cache.unlink()
    dead = cache.parent / f".{cache.name}.{2**22 + 12345}.abcdefgh.tmp"  # above Linux's default pid_max
    live = cache.parent / f".{cache.name}.{os.getpid()}.abcdefgh.tmp"  # a build in progress elsewhere
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    prepare_dataset(data)
    assert not dead.exists() and live.exists()


@pytest.mark.slow
def test_ctrl_c_while_the_cache_is_built_is_one_line(tmp_path):
    folder = image_folder(tmp_path / "images", 8)
    Image.new("RGB", (3000, 3000), (40, 80, 120)).save(folder / "large.png")  # slow to decode, small on disk
    for i in range(60):
        shutil.copy(folder / "large.png", folder / f"large{i}.png")
    process = subprocess.Popen(
        [sys.executable, "train.py", "--config", DIGITS, *TINY, *folder_overrides(folder), "data.num_workers=2",
         f"log.root={tmp_path / 'Models'}", "log.run_name=run"],
        cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    seen = ""
    while not re.search(r"preparing .* [1-9]\d*/69 ", seen):  # the workers are up and decoding
        chunk = process.stderr.read(1)
        assert chunk, seen
        seen += chunk
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to every process of the group
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130 and "aborted" in rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest


# Sampling ----------------------------------------------------------------------------------


def test_out_naming_a_file_is_refused_before_sampling(tiny_run, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "taken.png"
    out.write_bytes(b"mine")
    monkeypatch.setattr(diffusion.generate, "generate_from", lambda *a, **k: pytest.fail("sampled first"))
    with pytest.raises(UserError, match=f"{out}: is a file; expected an output folder"):
        inference.main(["--checkpoint", str(tiny_run), "--out", str(out)])
    assert out.read_bytes() == b"mine"


def test_samples_stream_to_disk_in_chunks_that_match_one_long_run(tiny_run, tmp_path, monkeypatch):  # noqa: F811
    common = ["--checkpoint", str(tiny_run), "--save-images", "--video", "none", "--steps", "4", "--batch-size", "2"]
    assert inference.main([*common, "--out", str(tmp_path / "whole"), "--num-samples", "5"]) == 0
    monkeypatch.setattr(diffusion.generate, "GRID_SAMPLES", 2)  # chunks of 2 images
    assert inference.main([*common, "--out", str(tmp_path / "chunks"), "--num-samples", "5"]) == 0
    for i in range(5):
        name = f"images/{i:06d}.png"
        assert (tmp_path / "chunks" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    grid = np.asarray(Image.open(tmp_path / "chunks" / "grid.png"))
    assert grid.shape[:2] == (12, 22)  # the first chunk: 2 images side by side (8 px, padding 2)


@pytest.mark.slow
def test_a_huge_sample_count_streams_instead_of_allocating_it(tiny_run, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "inference.py", "--checkpoint", str(tiny_run), "--out", str(out), "--num-samples", "1000000000",
         "--save-images", "--steps", "2", "--video", "none"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "images" / "000300.png").exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert (out / "grid.png").is_file()
    finally:
        process.kill()
        process.wait()


def test_fid_of_more_samples_than_memory_holds_is_refused_before_sampling(tiny_run, monkeypatch):  # noqa: F811
    monkeypatch.setattr(diffusion.generate, "generate_from", lambda *a, **k: pytest.fail("sampled first"))
    with pytest.raises(UserError, match=r"--fid with --num-samples 1000000000000 holds 64000\.0 GB of samples"):
        inference.main(["--checkpoint", str(tiny_run), "--fid", "--num-samples", str(10**12)])
    with pytest.raises(UserError, match="sample.seed: expected a seed from 0 to 4294967295, got -5"):
        inference.main(["--checkpoint", str(tiny_run), "--seed", "-5"])


def test_default_sample_folders_are_claimed_so_runs_in_one_second_never_share(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    first, second = default_out_dir(checkpoint), default_out_dir(checkpoint)
    assert first != second and first.is_dir() and second.is_dir() and first.parent == tmp_path / "run" / "samples"
