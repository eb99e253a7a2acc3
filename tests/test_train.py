"""The training loop end to end: CLI runs, checkpoints, exact resume, signals, errors, EMA."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subprocess_env
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import diffusion.trainer
from diffusion.checkpoint import load_checkpoint
from diffusion.config import from_dict, load_config
from diffusion.ema import EMA
from diffusion.errors import CheckpointError, run_cli
from diffusion.samplers import uses_channels_last
from diffusion.trainer import learning_rate, train
from models import build_model
from train import main

DIGITS = str(ROOT / "Configs" / "digits.yaml")
TINY = [  # an unconditional 8x8 U-Net with 8 base channels: a step takes milliseconds
    "model.num_classes=0", "model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4", "model.num_res_blocks=1",
    "model.attention_resolutions=[]", "data.image_size=8", "model.image_size=8",
    "train.batch_size=4", "train.warmup_steps=2", "train.device=cpu", "log.sample_every=0", "log.log_every=1",
]


def tiny(tmp_path: Path, *overrides: str, run: str = "run"):
    """The digits preset shrunk to a tiny model, writing under ``tmp_path``."""
    return load_config(DIGITS, [*TINY, f"log.root={tmp_path / 'Models'}", f"log.run_name={run}",
                                f"data.root={tmp_path / 'Data'}", *overrides])


def image_folder(path: Path, count: int, size: tuple[int, int] = (12, 10)) -> Path:
    rng = np.random.default_rng(count)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def folder_overrides(folder: Path) -> list[str]:
    return ["data.source=folder", f"data.root={folder}", "model.in_channels=3", "data.num_workers=0"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def cli_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: main(list(args)))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


# Pieces ------------------------------------------------------------------------------------


def test_ema_follows_the_warmup_formula_by_hand():
    """d_n = min(decay, (1 + n) / (10 + n)): 0.1, 2/11, 1/4 for the first three updates."""
    model = torch.nn.Linear(1, 1, bias=False)
    model.register_buffer("scale", torch.tensor(0.0))
    model.register_buffer("count", torch.tensor(0))
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    capped = EMA(model, decay=0.2)
    for value in (1.0, 2.0, 3.0):
        model.weight.data.fill_(value)
        model.scale.fill_(10 * value)
        model.count.fill_(int(value))
        ema.update(model)
        capped.update(model)
    # 0.9 * 1 = 0.9;  2/11 * 0.9 + 9/11 * 2 = 1.8;  1/4 * 1.8 + 3/4 * 3 = 2.7
    assert ema.module.weight.item() == pytest.approx(2.7)
    assert ema.module.scale.item() == pytest.approx(27.0)  # floating-point buffers are averaged
    assert ema.module.count.item() == 3  # integer buffers are copied
    assert capped.module.weight.item() == pytest.approx(0.2 * 1.8 + 0.8 * 3)  # third decay capped at 0.2
    assert ema.updates == 3 and ema.current_decay == pytest.approx(4 / 13)
    assert list(ema.state_dict()) == list(model.state_dict())


def test_learning_rate_warms_up_linearly_then_stays():
    cfg = load_config(DIGITS, ["train.lr=1e-3", "train.warmup_steps=4"]).train
    assert [learning_rate(n, cfg) for n in (1, 2, 4, 5, 1000)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    cfg = load_config(DIGITS, ["train.lr=1e-3", "train.warmup_steps=0"]).train
    assert learning_rate(1, cfg) == 1e-3


def test_learning_rate_decays_to_zero_over_the_last_part_of_the_run():
    def rates(decay: str, start: float, warmup: int = 0) -> list[float]:
        cfg = load_config(DIGITS, ["train.lr=2", "train.steps=10", f"train.warmup_steps={warmup}",
                                   f"train.lr_decay={decay}", f"train.lr_decay_start={start}"]).train
        return [learning_rate(n, cfg) for n in range(1, 11)]

    # start 0.5 of 10 steps: constant through step 6, then p = (n - 1 - 5) / 5 = 0.2, 0.4, 0.6, 0.8.
    assert rates("linear", 0.5) == pytest.approx([2, 2, 2, 2, 2, 2, 1.6, 1.2, 0.8, 0.4])
    cosine = [2 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0.2, 0.4, 0.6, 0.8)]
    assert rates("cosine", 0.5) == pytest.approx([2] * 6 + cosine)
    # warmup and decay multiply: step 2 of a 4-step warmup, p = 1/10 of a decay starting at once.
    assert rates("linear", 0.0, warmup=4)[:2] == pytest.approx([2 * 0.25 * 1.0, 2 * 0.5 * 0.9])
    assert rates("none", 0.5) == pytest.approx([2] * 10)


def test_lr_decay_reaches_the_optimizer(tmp_path):
    run = train(tiny(tmp_path, "train.steps=4", "train.warmup_steps=0", "train.lr=1e-3", "log.log_every=1",
                     "train.lr_decay=linear", "train.lr_decay_start=0.5"))
    assert [lr for _, lr in scalars(run, "train/lr")] == pytest.approx([1e-3, 1e-3, 1e-3, 0.5e-3])


# End-to-end runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_digits_run_writes_checkpoints_config_and_tensorboard(tmp_path, capsys):
    args = ["--config", DIGITS, *TINY, f"log.root={tmp_path}", "log.run_name=digits", f"data.root={tmp_path / 'Data'}",
            "train.steps=3", "train.checkpoint_every=2", "log.log_every=2"]
    result = cli("--config", "digits", *args[2:], "--threads", "1")  # a preset name works as --config
    assert result.returncode == 0, result.stderr
    assert "trained steps 0-3" in result.stderr
    run = tmp_path / "digits"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_0000002.pt", "step_0000003.pt"]
    saved = load_config(run / "config.yaml")
    assert saved.model.base_channels == 8 and saved.log.run_name == "digits"
    assert [step for step, _ in scalars(run, "train/loss")] == [2, 3]  # every log.log_every steps and at the end

    error = cli_error(capsys, *args)  # the run folder exists: refused, nothing overwritten
    assert "already exists" in error and f"--resume {run}" in error

    threads = torch.get_num_threads()
    try:
        assert main([*args[:-3], "--resume", "train.steps=5", "--threads", "2"]) == 0  # bare --resume: log.run_name names the run
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert "trained steps 3-5" in capsys.readouterr().err
    assert load_checkpoint(run)["step"] == 5


@pytest.mark.slow
def test_cli_folder_run_skips_a_corrupt_image(tmp_path):
    folder = image_folder(tmp_path / "images", 6)
    (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    result = cli("--config", DIGITS, *TINY, *folder_overrides(folder), f"log.root={tmp_path / 'Models'}",
                 "log.run_name=faces", "train.steps=2")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("skipping unreadable image") == 1 and str(folder / "broken.png") in result.stderr
    run = tmp_path / "Models" / "faces"
    assert (run / "checkpoints" / "step_0000002.pt").is_file() and (run / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    (cache,) = [p for p in (folder / "cache").glob("folder-centercrop-8px-*.npy") if not p.stem.endswith("-kept")]
    assert np.load(cache).shape == (6, 8, 8, 3)
    assert len(np.load(cache.with_name(f"{cache.stem}-kept.npy"))) == 6  # which files the images came from


def test_checkpoint_contents_rotation_and_hyperparameters(tmp_path):
    cfg = tiny(tmp_path, "train.steps=5", "train.checkpoint_every=1", "train.keep_checkpoints=2", "train.ema_every=2",
               "train.weight_decay=0.05", "train.adam_betas=[0.8,0.9]")
    run = train(cfg)
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["last.pt", "step_0000004.pt", "step_0000005.pt"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 5 and state["ema_updates"] == 2  # steps 2 and 4
    assert state["config"] == cfg.to_dict() and from_dict(state["config"]).model == cfg.model
    assert set(state["versions"]) == {"torch", "python", "ddpm"}
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["data"] == {"epoch": 0, "index": 5}
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.05 and tuple(group["betas"]) == (0.8, 0.9)
    for key in ("model", "ema"):
        model = build_model(cfg)
        model.load_state_dict(state[key])  # a plain UNet state dict: no module./_orig_mod. prefixes
    assert not torch.equal(state["ema"]["conv_out.weight"], state["model"]["conv_out.weight"])
    step5 = torch.load(run / "checkpoints" / "step_0000005.pt", weights_only=True)
    assert all(torch.equal(step5["model"][k], v) for k, v in state["model"].items())


def test_overfitting_one_batch_drives_the_loss_down(tmp_path):
    folder = image_folder(tmp_path / "one", 4)
    run = train(tiny(tmp_path, *folder_overrides(folder), "data.random_flip=false", "train.steps=80",
                     "train.lr=3e-3", "train.warmup_steps=0"))
    losses = [value for _, value in scalars(run, "train/loss")]
    assert len(losses) == 80
    assert np.mean(losses[-15:]) < 0.5 * np.mean(losses[:15])


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    flat.update({f"ema.{k}": v for k, v in state["ema"].items()})
    for i, profile in enumerate(state["posthoc_ema"]):
        flat.update({f"posthoc{i}.{k}": v for k, v in profile.items()})
    for index, buffers in state["optimizer"]["state"].items():
        flat.update({f"adam.{index}.{k}": v for k, v in buffers.items()})
    return flat


def test_resume_is_bitwise_exact(tmp_path):
    folder = image_folder(tmp_path / "images", 10)  # 2 batches an epoch: resuming crosses epochs
    common = [*folder_overrides(folder), "data.random_flip=true", "model.dropout=0.1", "train.grad_accum=2",
              "train.checkpoint_every=100", "train.posthoc_ema=[0.05,0.1]", "train.posthoc_every=2"]
    straight = train(tiny(tmp_path, *common, "train.steps=6", run="straight"))
    split = train(tiny(tmp_path, *common, "train.steps=3", run="split"))
    assert load_checkpoint(split)["step"] == 3
    train(tiny(tmp_path, *common, "train.steps=6", run="split"), resume=True)

    expected, actual = weights_of(straight), weights_of(split)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not different, f"differ after resume: {different[:5]}"
    assert any(k.startswith("posthoc1.") for k in expected)
    snapshots = [torch.load(run / "posthoc" / "step_0000006.pt", weights_only=True) for run in (straight, split)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(*(s["weights"] for s in snapshots), strict=True) for k in a)
    other_seed = weights_of(train(tiny(tmp_path, *common, "train.steps=6", "train.seed=1", run="seed1")))
    assert not torch.equal(other_seed["model.conv_in.weight"], expected["model.conv_in.weight"])


def test_resume_checks_the_architecture_and_finished_runs(tmp_path, capsys):
    run = train(tiny(tmp_path, "train.steps=1"))
    with pytest.raises(CheckpointError, match="trained with model.base_channels=8 but the config says 16"):
        train(tiny(tmp_path, "train.steps=2", "model.base_channels=16"), resume=run)
    train(tiny(tmp_path, "train.steps=1"), resume=run / "checkpoints" / "last.pt")
    assert "already at step 1 of train.steps=1" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no run of 'digits' to resume"):
        train(tiny(tmp_path / "elsewhere", "log.run_name="), resume=True)


@pytest.mark.slow
def test_a_checkpoint_write_killed_midway_leaves_last_pt_loadable(tmp_path):
    run = train(tiny(tmp_path, "train.steps=2"))
    last = run / "checkpoints" / "last.pt"
    before = load_checkpoint(last)
    # Rewrite last.pt with 256 MB of padding in another process and kill it during the write.
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, torch; from diffusion.checkpoint import load_checkpoint, save_checkpoint;"
         "state = load_checkpoint(sys.argv[1]); state['step'] = 99; state['padding'] = torch.ones(64 * 2**20);"
         "save_checkpoint(state, sys.argv[1])", str(last)],
        cwd=ROOT, env=subprocess_env(),
    )
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 2**20 for p in last.parent.glob(".last.pt.*.tmp")):
        assert writer.poll() is None and time.monotonic() < deadline, "the write was not caught in progress"
        time.sleep(0.005)
    writer.kill()
    writer.wait()
    assert list(last.parent.glob(".last.pt.*.tmp")), "the kill landed before the rename"
    after = load_checkpoint(last)
    assert after["step"] == 2 and "padding" not in after
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())

    train(tiny(tmp_path, "train.steps=3"), resume=run)  # resumes, and clears the leftover
    assert load_checkpoint(run)["step"] == 3 and not list(last.parent.glob(".*.tmp"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_prints_the_resume_command(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "train.py", "--config", DIGITS, *TINY, f"log.root={tmp_path}", "log.run_name=long",
         f"data.root={tmp_path / 'Data'}", "train.steps=100000", "log.log_every=1000"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    run = tmp_path / "long"
    deadline = time.monotonic() + 60
    while not (run / "tensorboard").is_dir():  # created just before the first step
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    step = load_checkpoint(run)["step"]
    assert 0 < step < 100000
    assert f"stopped at step {step}" in stderr
    command = re.search(r"resume with:\n\s+python train\.py (.*)", stderr).group(1).split()
    assert main([*command, f"train.steps={step + 2}"]) == 0
    assert load_checkpoint(run)["step"] == step + 2


def test_non_finite_loss_stops_with_exit_code_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    code = main(["--config", DIGITS, *TINY, f"log.root={tmp_path}", "log.run_name=nan", f"data.root={tmp_path / 'D'}",
                 "train.steps=20", "train.warmup_steps=0", "train.lr=1e30", "train.checkpoint_every=1"])
    assert code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    bad_step = int(re.search(r"non-finite at step (\d+)", message).group(1))
    assert "train.lr" in message and "fp32" in message and f"(step {bad_step - 1})" in message
    state = load_checkpoint(tmp_path / "nan")
    assert state["step"] == bad_step - 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# Options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["train.precision=bf16", "train.precision=fp16", "train.channels_last=true"])
def test_precision_and_memory_format_options_train(tmp_path, option):
    run = train(tiny(tmp_path, "train.steps=2", option))
    state = load_checkpoint(run)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert ("scale" in state["scaler"]) == (option == "train.precision=fp16")


def test_fp16_steps_skipped_for_an_overflow_are_counted_not_averaged(tmp_path, monkeypatch):
    # A scale of 2^40 overflows fp16 at once; the skip divides it by 2^30 so later steps apply.
    scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda *args, **kwargs: scaler(*args, init_scale=2.0**40, backoff_factor=2.0**-30, **kwargs))
    norms, clip = [], torch.nn.utils.clip_grad_norm_

    def recorded_clip(*args: object) -> torch.Tensor:
        norm = clip(*args)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded_clip)
    run = train(tiny(tmp_path, "train.steps=4", "train.precision=fp16", "log.log_every=2"))
    assert scalars(run, "train/skipped_steps") == [(2, 1.0), (4, 0.0)]
    assert not math.isfinite(norms[0]) and all(0 < n < math.inf for n in norms[1:])
    logged = [value for _, value in scalars(run, "train/grad_norm")]
    assert logged == pytest.approx([norms[1], (norms[2] + norms[3]) / 2])  # the first: step 2's alone
    assert load_checkpoint(run)["scaler"]["scale"] == 2.0**10
    bf16 = train(tiny(tmp_path, "train.steps=1", "train.precision=bf16", run="bf16"))
    events = EventAccumulator(str(bf16 / "tensorboard"))
    events.Reload()
    assert "train/grad_norm" in events.Tags()["scalars"] and "train/skipped_steps" not in events.Tags()["scalars"]


def test_training_on_the_cpu_keeps_freed_host_memory(tmp_path, monkeypatch):
    devices = []
    monkeypatch.setattr(diffusion.trainer, "tune_host_allocator", devices.append)
    train(tiny(tmp_path, "train.steps=1", "train.device=cpu"))
    assert devices == [torch.device("cpu")]


@pytest.mark.parametrize("flip, channels_last", [(True, True), (False, False)])
def test_train_options_reach_the_step(tmp_path, monkeypatch, flip, channels_last):
    seen = {"calls": []}
    iterator, ema = diffusion.trainer.BatchIterator, diffusion.trainer.EMA
    monkeypatch.setattr(diffusion.trainer, "BatchIterator",
                        lambda *args, **kwargs: seen.update(flip=kwargs["random_flip"]) or iterator(*args, **kwargs))
    monkeypatch.setattr(diffusion.trainer, "EMA", lambda model, decay: seen.update(decay=decay) or ema(model, decay))

    def record(module: torch.nn.Module, inputs: tuple) -> None:
        if module.__class__.__name__ == "UNet":  # digits have one channel, so the weights tell the layout
            seen["calls"].append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                                  uses_channels_last(module)))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run = train(tiny(tmp_path, "train.steps=2", "train.grad_accum=2", "train.ema_decay=0.2", "train.precision=bf16",
                         f"data.random_flip={str(flip).lower()}", f"train.channels_last={str(channels_last).lower()}"))
    finally:
        hook.remove()
    assert (seen["flip"], seen["decay"]) == (flip, 0.2)
    assert seen["calls"] == [(torch.bfloat16, channels_last)] * 4  # 2 steps x 2 accumulated micro-batches
    assert load_checkpoint(run)["data"]["index"] == 4


def test_grad_clip_bounds_the_first_update(tmp_path):
    def first_update(clip: str) -> float:
        cfg = tiny(tmp_path, "train.steps=1", "train.warmup_steps=0", "train.lr=0.01", clip, run=clip)
        torch.manual_seed(cfg.train.seed)
        initial = build_model(cfg).state_dict()["conv_out.weight"]  # the only one with a gradient at step 1
        after = load_checkpoint(train(cfg))["model"]["conv_out.weight"]
        return (after - initial).abs().max().item()

    # AdamW's first step moves every weight by ~lr whatever the gradient's scale, unless the
    # clipped gradient is far below Adam's epsilon (1e-8).
    assert first_update("train.grad_clip=0") == pytest.approx(0.01, rel=0.05)
    assert first_update("train.grad_clip=1e-14") < 1e-3


@pytest.mark.slow
def test_compiled_model_trains(tmp_path, monkeypatch):
    # Dynamo and AOTAutograd trace the model as with the default backend; the inductor's
    # C++ code generation (minutes on two CPU cores) is left out.
    compile_ = torch.compile
    modes, requests = [], []
    monkeypatch.setattr(torch, "compile", lambda model, **options: modes.append(options) or compile_(model, backend="aot_eager"))
    network = diffusion.trainer.compile_network
    monkeypatch.setattr(diffusion.trainer, "compile_network",
                        lambda net, device, cuda_graphs: requests.append(cuda_graphs) or network(net, device, cuda_graphs))
    run = train(tiny(tmp_path, "train.steps=2", "train.compile=true", "train.cuda_graphs=true"))
    assert requests == [True]  # train.cuda_graphs reaches the compile call ...
    assert modes == [{}]  # ... and CUDA graphs are used on CUDA only
    state = load_checkpoint(run)
    build_model(from_dict(state["config"])).load_state_dict(state["model"])  # no _orig_mod. prefix


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    base = ["--config", DIGITS, *TINY, f"log.root={tmp_path}", "train.steps=1"]
    assert "image folder not found" in cli_error(capsys, *base, *folder_overrides(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "no images found" in cli_error(capsys, *base, *folder_overrides(tmp_path / "empty"))
    assert "model.in_channels is 3 but data.source 'digits' has 1 channel" in cli_error(
        capsys, *base, f"data.root={tmp_path}", "model.in_channels=3")
    assert "train.lr: expected a number, got 'fast'" in cli_error(capsys, *base, "train.lr=fast")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  stepz: 10\n")
    assert "unknown key 'stepz' (did you mean 'steps'?)" in cli_error(capsys, "--config", str(bad_yaml))
    assert "norm_groups" in cli_error(capsys, *base, f"data.root={tmp_path}", "model.norm_groups=3")
    if not torch.cuda.is_available():
        assert "train.device: 'cuda' requested but CUDA is not available" in cli_error(capsys, *base, "train.device=cuda")
    assert not any(p.name != "empty" and p.name != "bad.yaml" for p in tmp_path.iterdir())  # no run folder made


def test_bad_override_from_a_real_process(tmp_path):
    result = cli("--config", DIGITS, "train.stepz=3")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: override 'train.stepz=3': train: unknown key 'stepz' (did you mean 'steps'?)"


# Needs diffusion.samplers (written separately): kept last.
def test_sample_grids_go_to_samples_and_tensorboard(tmp_path, monkeypatch):
    import diffusion.samplers

    generate_from, used = diffusion.samplers.generate_from, []
    monkeypatch.setattr(diffusion.samplers, "generate_from",
                        lambda model, schedule, options, **kw: used.append(options) or generate_from(model, schedule, options, **kw))
    run = train(tiny(tmp_path, "train.steps=3", "log.sample_every=2", "log.sample_count=4", "log.sample_steps=2",
                     "log.sample_sampler=ddim", "sample.ddpm_variance=beta_tilde"))
    assert [(o.sampler, o.steps, o.num_samples, o.ddpm_variance) for o in used] == [("ddim", 2, 4, "beta_tilde")] * 2
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000003.png"]  # every sample_every steps and at the end
    with Image.open(run / "samples" / "step_0000002.png") as grid:
        assert grid.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2) and grid.mode == "L"  # 2x2 grid of 8x8, padding 2
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("samples/ema")] == [2, 3]
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config as text
