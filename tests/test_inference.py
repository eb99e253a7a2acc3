"""inference.py end to end on a tiny checkpoint trained here: files, flags, reproducibility, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import ROOT, RandomConvFeatures, subprocess_env, write_random_inception_weights

import diffusion.device
import diffusion.fid
import diffusion.generate
import inference
from diffusion.checkpoint import save_checkpoint
from diffusion.config import from_dict
from diffusion.data import prepare_dataset
from diffusion.device import cpu_has_bf16
from diffusion.errors import run_cli
from diffusion.generate import load_model
from diffusion.samplers import uses_channels_last
from diffusion.schedule import NoiseSchedule
from models import UNet

TINY = {
    "data": {"source": "digits", "image_size": 8},
    "model": {"image_size": 8, "in_channels": 1, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [4], "norm_groups": 4, "dropout": 0.0},
    "diffusion": {"timesteps": 40},
    "sample": {"sampler": "ddpm", "steps": 40, "num_samples": 6, "batch_size": 4, "frames": 5, "fps": 4},
    "log": {"sample_steps": 10},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder whose checkpoints/last.pt holds a U-Net trained 30 steps on 8x8 stripes;
    its 'ema' entry is the weights after 15 steps, so --no-ema visibly changes the samples."""
    cfg = from_dict(TINY, name="tiny")
    torch.manual_seed(0)
    model = UNet(**dataclasses.asdict(cfg.model))
    schedule = NoiseSchedule.from_config(cfg.diffusion)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    angles = torch.rand(64) * 6.28
    data = torch.tanh(3 * (xx * angles.cos()[:, None, None] + yy * angles.sin()[:, None, None]))[:, None]
    for step in range(30):
        loss = schedule.training_loss(model, data[torch.randint(0, 64, (16,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 14:
            ema = {k: v.clone() for k, v in model.state_dict().items()}
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_checkpoint({"model": model.state_dict(), "ema": ema, "step": 30, "config": cfg.to_dict()},
                    run / "checkpoints" / "last.pt")
    return run


def checkpoint_of(run: Path) -> Path:
    return run / "checkpoints" / "last.pt"


def sample(run_or_checkpoint: Path, out: Path, *flags: str) -> dict:
    """inference.py's main in this process; returns its samples.json."""
    assert inference.main(["--checkpoint", str(run_or_checkpoint), "--out", str(out), *flags]) == 0
    return json.loads((out / "samples.json").read_text())


def read_png(path: Path) -> np.ndarray:
    return np.asarray(iio.imread(path))


def test_cli_writes_grid_images_animation_and_log(tiny_run):
    """The real command on a run folder: config defaults (ddpm, 40 steps, 6 images in batches of 4,
    5 frames at 4 fps), files in <run>/samples/<timestamp>/, each one printed."""
    done = subprocess.run(
        [sys.executable, "inference.py", "--checkpoint", str(tiny_run), "--save-images"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (out,) = (tiny_run / "samples").iterdir()
    for name in ("grid.png", "images", "denoise.mp4", "samples.json"):
        assert str(out / name) in done.stdout
    assert "ddpm 40 steps" in done.stderr  # the progress bar

    grid = read_png(out / "grid.png")
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)  # 6 images of 8x8 in 3 columns, 2-pixel borders
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:06d}.png" for i in range(6)]
    for i, name in enumerate(names):  # image i is grid cell i
        row, col = divmod(i, 3)
        cell = grid[2 + 10 * row : 10 + 10 * row, 2 + 10 * col : 10 + 10 * col]
        assert np.array_equal(read_png(out / "images" / name), cell)

    video = imageio.get_reader(out / "denoise.mp4", format="FFMPEG")
    assert video.count_frames() == 5 + 4  # K frames, then the final grid held for fps frames (1 s)
    meta = video.get_meta_data()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 4
    assert meta["size"] == (32 * 12, 22 * 12)  # upscaled x12 (short side >= 256), already even
    last = np.asarray(video.get_data(video.count_frames() - 1))[..., 0].astype(int)
    assert np.abs(last[::12, ::12] - grid).mean() < 8  # the last frame is the final grid

    record = json.loads((out / "samples.json").read_text())
    assert record["checkpoint"] == str(checkpoint_of(tiny_run)) and record["step"] == 30
    native = "bf16" if cpu_has_bf16() else "fp32"  # the config's precision auto, on this CPU
    assert record["weights"] == "ema" and record["precision"] == native and record["device"] == "cpu"
    assert (record["sampler"], record["steps"], record["eta"], record["seed"]) == ("ddpm", 40, 0.0, 0)
    assert (record["num_samples"], record["batch_size"], record["frames"], record["fps"]) == (6, 4, 5, 4)
    assert 0 < record["sampling_seconds"] <= record["wall_seconds"]


def test_samples_depend_on_the_seed_not_on_the_batch_size(tiny_run, tmp_path):
    common = ["--save-images", "--video", "none", "--no-grid", "--steps", "8"]
    sample(tiny_run, tmp_path / "a", *common, "--batch-size", "6")
    sample(tiny_run, tmp_path / "b", *common, "--batch-size", "1")
    sample(tiny_run, tmp_path / "c", *common, "--batch-size", "4", "--seed", "1")
    sample(tiny_run, tmp_path / "d", *common, "--num-samples", "2")
    for i in range(6):
        name = f"images/{i:06d}.png"
        assert np.array_equal(read_png(tmp_path / "a" / name), read_png(tmp_path / "b" / name))
        assert not np.array_equal(read_png(tmp_path / "a" / name), read_png(tmp_path / "c" / name))
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == ["000000.png", "000001.png"]
    assert np.array_equal(read_png(tmp_path / "d" / "images/000001.png"), read_png(tmp_path / "a" / "images/000001.png"))


def test_flags_override_the_config(tiny_run, tmp_path, monkeypatch):
    generate_from, used = diffusion.generate.generate_from, []
    monkeypatch.setattr(diffusion.generate, "generate_from", lambda model, schedule, options, **kw: used.append(
        (options, kw["autocast_dtype"])) or generate_from(model, schedule, options, **kw))
    record = sample(
        checkpoint_of(tiny_run), tmp_path / "x",
        "--sampler", "ddim", "--steps", "10", "--eta", "0.5", "--num-samples", "3", "--batch-size", "2",
        "--precision", "bf16", "--device", "cpu", "--video", "gif", "--frames", "3", "--fps", "2", "--no-grid",
    )
    assert (record["sampler"], record["steps"], record["eta"]) == ("ddim", 10, 0.5)
    assert (record["num_samples"], record["batch_size"], record["precision"]) == (3, 2, "bf16")
    assert (record["frames"], record["fps"]) == (3, 2)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["denoise.gif", "samples.json"]
    gif = iio.imread(tmp_path / "x" / "denoise.gif", index=None)
    assert gif.shape[1:3] == (22 * 12, 22 * 12) and 1 < len(gif) <= 3 + 2  # 3 frames + 1 s held (repeats merge)
    assert record["files"] == ["denoise.gif"]
    ((options, dtype),) = used  # what the sampler ran with, not only what samples.json says
    assert (options.sampler, options.steps, options.eta, options.num_samples, options.batch_size) == ("ddim", 10, 0.5, 3, 2)
    assert dtype == torch.bfloat16


@pytest.mark.parametrize(("native", "amx", "expected", "channels_last"),
                         [(True, True, "bf16", True), (True, False, "bf16", False), (False, False, "fp32", True)])
def test_auto_precision_samples_in_bf16_only_on_cpus_with_native_bf16(
    native, amx, expected, channels_last, tiny_run, tmp_path, monkeypatch
):
    """bf16 where the CPU has it; channels-last weights in fp32 and on AMX, contiguous otherwise."""
    monkeypatch.setattr(diffusion.device, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    seen = []
    real_generate = diffusion.generate.generate_from
    monkeypatch.setattr(diffusion.generate, "generate_from", lambda model, *a, **kw: seen.append(
        (kw["autocast_dtype"], uses_channels_last(model))) or real_generate(model, *a, **kw))
    record = sample(tiny_run, tmp_path / "out", "--video", "none", "--num-samples", "2")
    assert (record["precision"], record["channels_last"]) == (expected, channels_last)
    assert seen == [(torch.bfloat16 if native else None, channels_last)]
    fp32 = sample(tiny_run, tmp_path / "fp32", "--video", "none", "--num-samples", "2", "--precision", "fp32")
    assert (fp32["precision"], fp32["channels_last"]) == ("fp32", True)


def test_threads_flag_sets_the_torch_threads(tiny_run, tmp_path):
    threads = torch.get_num_threads()
    try:
        sample(tiny_run, tmp_path / "t", "--video", "none", "--steps", "2", "--num-samples", "1", "--threads", "2")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_no_ema_samples_the_raw_weights(tiny_run, tmp_path):
    ema = sample(tiny_run, tmp_path / "ema", "--video", "none", "--steps", "8")
    raw = sample(tiny_run, tmp_path / "raw", "--video", "none", "--steps", "8", "--no-ema")
    assert (ema["weights"], raw["weights"]) == ("ema", "model")
    assert "frames" not in raw and raw["files"] == ["grid.png"]
    assert not np.array_equal(read_png(tmp_path / "ema" / "grid.png"), read_png(tmp_path / "raw" / "grid.png"))


def test_compile_flag_samples_through_torch_compile(tiny_run, tmp_path, monkeypatch):
    # Dynamo traces the network as with the default backend; the inductor's C++ code generation
    # (minutes on two CPU cores) is left out.
    compiled = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: compiled.append((model, options)) or compile_(model, backend="eager"))
    common = ["--video", "none", "--steps", "8", "--save-images", "--no-grid"]
    plain = sample(tiny_run, tmp_path / "plain", *common)
    fast = sample(tiny_run, tmp_path / "compiled", *common, "--compile")
    assert len(compiled) == 1 and isinstance(compiled[0][0], UNet) and compiled[0][1] == {}  # CUDA options on CUDA only
    assert (plain["compiled"], fast["compiled"]) == (False, True)
    for i in range(6):
        name = f"images/{i:06d}.png"
        assert np.array_equal(read_png(tmp_path / "plain" / name), read_png(tmp_path / "compiled" / name))


def test_checkpoints_load_channels_last_on_the_cpu(tiny_run):
    """Faster CPU sampling (benchmarks/bench_sampling.py --channels-last); the run trained contiguous."""
    assert not from_dict(TINY).train.channels_last
    assert uses_channels_last(load_model(tiny_run, device="cpu").model)


def test_mp4_falls_back_to_gif_without_ffmpeg(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg-here"))
    record = sample(tiny_run, tmp_path / "x", "--steps", "4", "--frames", "2")
    assert record["files"] == ["grid.png", "denoise.gif"] and (tmp_path / "x" / "denoise.gif").is_file()


# Bad input: one line on stderr, exit code 2 -----------------------------------------------


def fails(argv: list[str], capsys) -> str:
    """Run the CLI in this process through run_cli; return its one-line error message."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: inference.main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="session")
def broken(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """Files that are not usable checkpoints, each next to what makes it so."""
    root = tmp_path_factory.mktemp("broken")
    good = checkpoint_of(tiny_run).read_bytes()
    state = torch.load(checkpoint_of(tiny_run), weights_only=True)
    files = {"text": root / "notes.pt", "truncated": root / "truncated.pt", "mismatch": root / "mismatch.pt",
             "no_ema": root / "no_ema.pt", "bad_config": root / "bad_config.pt"}
    files["text"].write_text("these are not the weights you are looking for\n")
    files["truncated"].write_bytes(good[: len(good) // 2])
    wider = json.loads(json.dumps(state["config"]))
    wider["model"]["base_channels"] = 16
    save_checkpoint({**state, "config": wider}, files["mismatch"])
    save_checkpoint({k: v for k, v in state.items() if k != "ema"}, files["no_ema"])
    save_checkpoint({**state, "config": {**state["config"], "sample": {"sampler": "euler"}}}, files["bad_config"])
    (root / "empty_run").mkdir()
    files["empty_run"] = root / "empty_run"
    return files


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no such checkpoint file or run folder"),
        ("empty_run", "run folder has no checkpoints/last.pt"),
        ("text", "not a checkpoint"),
        ("truncated", "truncated"),
        ("mismatch", "do not match the model its config describes: 127 tensors differ in shape"),
        ("no_ema", "has no 'ema' weights (use --no-ema"),
        ("bad_config", "sample.sampler: expected one of"),
    ],
)
def test_unusable_checkpoints_are_one_line_errors(case, expected, broken, tmp_path, capsys):
    path = broken.get(case, tmp_path / "nowhere" / "last.pt")
    err = fails(["--checkpoint", str(path), "--out", str(tmp_path / "out")], capsys)
    assert str(path) in err and expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--num-samples", "0"], "argument --num-samples: expected a positive integer, got 0"),
        (["--batch-size", "-3"], "argument --batch-size: expected a positive integer, got -3"),
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--frames", "-1"], "argument --frames: expected a positive integer, got -1"),
        (["--fps", "0"], "argument --fps: expected a positive integer, got 0"),
        (["--steps", "many"], "argument --steps: expected a positive integer, got 'many'"),
        (["--steps", "41"], "sample.steps: 41 is more than diffusion.timesteps (40)"),
        (["--eta", "1.5"], "sample.eta: expected a value in [0, 1], got 1.5"),
        (["--eta", "-0.1"], "sample.eta: expected a value in [0, 1], got -0.1"),
        (["--sampler", "euler"], "argument --sampler: invalid choice: 'euler'"),
        (["--fid", "--num-samples", "1"], "--fid needs at least 2 samples, got --num-samples 1"),
        (["--device", "tpu"], "--device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["--device", "meta"], "--device: expected auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, expected, tiny_run, tmp_path, capsys):
    err = fails(["--checkpoint", str(tiny_run), "--out", str(tmp_path / "out"), *flags], capsys)
    assert expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_one_line_error(tiny_run, tmp_path, capsys):
    err = fails(["--checkpoint", str(tiny_run), "--device", "cuda:1"], capsys)
    assert "--device: 'cuda:1' requested but CUDA is not available on this machine; use cpu" in err


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_pickle_that_runs_code_is_refused(tiny_run, tmp_path):
    state = torch.load(checkpoint_of(tiny_run), weights_only=True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({**state, "ema": _Payload(marker)}, evil)
    done = subprocess.run(
        [sys.executable, "inference.py", "--checkpoint", str(evil), "--out", str(tmp_path / "out")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {evil}: ") and "refused" in done.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(evil, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()


def test_samples_a_run_folder_written_by_the_trainer(tmp_path):
    """The checkpoint format end to end: a 3-step training run, then inference on its folder."""
    from diffusion.trainer import train

    cfg = from_dict({
        **TINY,
        "data": {"source": "digits", "image_size": 8, "root": str(tmp_path / "data"), "num_workers": 0, "random_flip": False},
        "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 3, "device": "cpu"},
        "log": {"root": str(tmp_path / "Models"), "run_name": "e2e", "sample_every": 0, "sample_steps": 10},
    })
    run = train(cfg)
    record = sample(run, tmp_path / "out", "--steps", "5", "--frames", "3")
    assert record["checkpoint"] == str(run / "checkpoints" / "last.pt") and record["step"] == 3
    assert record["files"] == ["grid.png", "denoise.mp4"]


# FID ----------------------------------------------------------------------------------------


@pytest.fixture
def digits_checkpoint(tiny_run, tmp_path) -> Path:
    """The tiny checkpoint with its training data, the digits at 8x8, under ``tmp_path/data``."""
    state = torch.load(checkpoint_of(tiny_run), weights_only=True)
    config = {**state["config"], "data": {**state["config"]["data"], "root": str(tmp_path / "data")}}
    path = tmp_path / "digits" / "checkpoints" / "last.pt"
    save_checkpoint({**state, "config": config}, path)
    return path


def training_data_of(checkpoint: Path) -> np.ndarray:
    """The prepared training set named by a checkpoint's config."""
    return prepare_dataset(from_dict(torch.load(checkpoint, weights_only=True)["config"]).data)


def test_fid_flag_scores_the_samples_against_the_training_data(digits_checkpoint, tmp_path, monkeypatch, capsys):
    """--fid with a small feature network in place of Inception: the FID and KID in samples.json
    and the printed report are those of the written images against the checkpoint's training set."""
    made = []
    monkeypatch.setattr(diffusion.fid, "inception_extractor", lambda device: made.append(device) or RandomConvFeatures())
    out = tmp_path / "out"
    record = sample(digits_checkpoint, out, "--fid", "--save-images", "--video", "none", "--sampler", "ddim", "--steps", "5")
    assert made == [torch.device("cpu")]

    pixels = np.stack([read_png(path) for path in sorted((out / "images").iterdir())])[..., None]
    training_set = training_data_of(digits_checkpoint)
    expected = diffusion.fid.compare_image_sets(training_set, pixels, RandomConvFeatures())
    assert record["fid"] == pytest.approx(expected.fid, rel=1e-9) and record["fid"] > 0
    assert record["kid_mean"] == pytest.approx(expected.kid_mean, rel=1e-9)
    assert record["kid_std"] == pytest.approx(expected.kid_std, abs=1e-12)
    assert record["fid_reference_images"] == len(training_set) == 1797

    printed = capsys.readouterr().out
    assert f"FID {record['fid']:.3f} of 6 samples (ddim, 5 steps) against 1797 training images" in printed
    assert f"KID {record['kid_mean']:.5f} ± {record['kid_std']:.5f}" in printed
    assert "warning: FID from fewer than 10000 samples is biased upwards" in printed


def test_fid_without_inception_weights_stops_before_sampling(digits_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    err = fails(["--checkpoint", str(digits_checkpoint), "--out", str(tmp_path / "out"), "--fid"], capsys)
    assert "could not download the Inception weights" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fid_cli_with_the_real_inception_network(digits_checkpoint, tmp_path):
    """The command line end to end with torch-fidelity's Inception (random weights in $TORCH_HOME,
    nothing downloaded) and reference statistics already cached for the training set. Slow: the
    imports, and the 2048-d matrix square root of FID (an eigendecomposition, seconds on one core)."""
    torch_home = tmp_path / "torch"
    write_random_inception_weights(torch_home / "hub" / "checkpoints" / diffusion.fid.URL_INCEPTION_V3.rsplit("/", 1)[-1])
    training_set = training_data_of(digits_checkpoint)
    cache = diffusion.fid.reference_cache_path(training_set, SimpleNamespace(name=diffusion.fid.INCEPTION_NAME))
    features = torch.rand(64, 2048, generator=torch.Generator().manual_seed(0))
    reference = diffusion.fid.ReferenceStatistics(
        features.double().sum(0), features.double().T @ features.double(), len(features), features
    )
    save_checkpoint(vars(reference), cache)

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "inference.py", "--checkpoint", str(digits_checkpoint), "--out", str(out), "--fid",
         "--num-samples", "3", "--sampler", "ddim", "--steps", "5", "--video", "none"],
        cwd=ROOT, env={**subprocess_env(), "TORCH_HOME": str(torch_home)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "samples.json").read_text())
    assert record["fid_reference_images"] == 64  # the cached statistics, not the 1797 digits
    assert np.isfinite([record["fid"], record["kid_mean"], record["kid_std"]]).all() and record["fid"] > 0
    assert f"FID {record['fid']:.3f} of 3 samples (ddim, 5 steps) against 64 training images" in done.stdout


def test_sampling_on_the_cpu_keeps_freed_host_memory(tiny_run, tmp_path, monkeypatch):
    devices = []
    monkeypatch.setattr(inference, "tune_host_allocator", devices.append)
    sample(tiny_run, tmp_path / "out", "--device", "cpu", "--num-samples", "2", "--steps", "2", "--no-grid",
           "--video", "none")
    assert devices == [torch.device("cpu")]


def test_analytic_variance_is_estimated_from_the_training_data(tiny_run, tmp_path):
    """sample.ddpm_variance=analytic: inference.py estimates one eps moment per step from
    sample.analytic_images training images (of data.root), records them, and samples with them."""
    state = torch.load(checkpoint_of(tiny_run), weights_only=True)
    state["config"]["sample"].update(ddpm_variance="analytic", analytic_images=5)
    state["config"]["data"]["root"] = str(tmp_path / "Data")
    save_checkpoint(state, tmp_path / "analytic.pt")
    record = sample(tmp_path / "analytic.pt", tmp_path / "a", "--video", "none", "--steps", "4")
    assert record["ddpm_variance"] == "analytic" and len(record["eps_moments"]) == 4
    assert all(0 < m < 2 for m in record["eps_moments"])
    assert prepare_dataset(from_dict(state["config"]).data).shape[1:] == (8, 8, 1)  # the data it read
    state["config"]["sample"]["analytic_images"] = 9
    save_checkpoint(state, tmp_path / "more.pt")
    more = sample(tmp_path / "more.pt", tmp_path / "c", "--video", "none", "--steps", "4")
    assert more["analytic_images"] == 9 and more["eps_moments"] != record["eps_moments"]  # a larger reference set
    state["config"]["sample"]["ddpm_variance"] = "beta_tilde"
    save_checkpoint(state, tmp_path / "small.pt")
    other = sample(tmp_path / "small.pt", tmp_path / "b", "--video", "none", "--steps", "4")
    assert "eps_moments" not in other
    assert not np.array_equal(read_png(tmp_path / "a" / "grid.png"), read_png(tmp_path / "b" / "grid.png"))
