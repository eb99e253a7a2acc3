"""The benchmarks: diffusers twins of the presets have our architecture, and the scripts run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import platform
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import subprocess_env
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

from attention import SpatialSelfAttention
from benchmarks import (
    bench_allocator,
    bench_data,
    bench_import,
    bench_models,
    bench_sampling,
    bench_train_step,
    cpu_bf16,
    digits_quality,
    profile_step,
)
from diffusion.config import from_dict, load_config
from diffusion.errors import UserError
from diffusion.generate import load_model
from diffusion.samplers import generate_from, uses_channels_last
from diffusion.schedule import NoiseSchedule
from diffusion.trainer import train
from models import UNet

needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None, reason="diffusers (the bench extra) is not installed"
)

TINY = {
    "data": {"source": "digits", "image_size": 8},
    "model": {"image_size": 8, "in_channels": 1, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [4], "norm_groups": 4, "dropout": 0.0},
    "train": {"batch_size": 2},
}


@needs_diffusers
@pytest.mark.parametrize("preset", ["ddpm_cifar10", "digits", "config"])
def test_diffusers_twin_has_our_parameter_count(repo_root, preset):
    cfg = load_config(repo_root / "Configs" / f"{preset}.yaml")
    ours, theirs = (bench_models.parameter_count(m) for m in bench_models.build_pair(cfg.model).values())
    assert abs(ours - theirs) <= 0.01 * theirs, (ours, theirs)


@needs_diffusers
def test_a_different_architecture_is_refused():
    cfg = from_dict(TINY)
    wider = dataclasses.replace(cfg.model, base_channels=16)
    pair = {"ours": UNet(**vars(cfg.model)), "diffusers": bench_models.DiffusersUNet(wider)}
    with pytest.raises(AssertionError, match="not the same architecture"):
        bench_models.check_same_size(pair)


def test_attention_flops_are_counted():
    """The fused CPU attention kernels count as QK^T and AV (2 L^2 C multiply-adds each)."""
    c, side = 16, 4
    tokens = side * side
    attn = SpatialSelfAttention(c, norm_groups=4)
    with FlopCounterMode(display=False, custom_mapping=bench_models.ATTENTION_FLOPS) as counter:
        attn(torch.randn(1, c, side, side))
    projections = 2 * tokens * c * (3 * c + c)
    assert counter.get_total_flops() == projections + 2 * 2 * tokens * tokens * c


@needs_diffusers
def test_ours_and_diffusers_count_the_same_flops():
    pair = bench_models.build_pair(from_dict(TINY).model)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([500])
    for backward in (False, True):
        ours, theirs = (bench_models.gflop_per_image(m, x, t, backward) for m in pair.values())
        assert ours > 0 and ours == pytest.approx(theirs, rel=0.01)


@needs_diffusers
@pytest.mark.slow
def test_model_benchmark_prints_a_table(tmp_path, repo_root):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    cmd = [sys.executable, str(repo_root / "benchmarks" / "bench_models.py"), "--config", str(preset),
           "--repeats", "1", "--threads", "1", "--markdown", "--modes", "channels_last", "--diffusers-modes", "fp32",
           "--default-allocator"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "1 thread(s)" in result.stdout and "host allocator: as the platform sets it" in result.stdout
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| preset"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(bench_models.COLUMNS)
    rows = [line for line in lines if line.startswith("| tiny")]
    modes = {(r.split("|")[2].strip(), r.split("|")[3].strip()) for r in rows}
    assert modes == {("fp32", "ours"), ("fp32", "diffusers"), ("channels_last", "ours")}
    fp32_diffusers = next(r for r in rows if "| fp32" in r and "| diffusers" in r)
    assert fp32_diffusers.rstrip(" |").endswith("1.00 | 1.00")  # the reference row


def test_model_benchmark_rejects_bad_flags(capsys):
    with pytest.raises(UserError, match="argument --repeats: expected a positive integer, got 0"):
        bench_models.main(["--repeats", "0"])
    with pytest.raises(UserError, match="argument --modes: unknown mode 'fp16'"):
        bench_models.main(["--modes", "fp16"])
    with pytest.raises(UserError, match="--diffusers-modes: compile not among --modes"):
        bench_models.main(["--modes", "bf16", "--diffusers-modes", "fp32", "compile"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_device_without_a_gpu_is_refused():
    with pytest.raises(UserError, match="--device: 'cuda' requested but CUDA is not available"):
        bench_models.main(["--device", "cuda"])


def test_modes_combine_with_plus():
    mode = bench_models.Mode.parse("bf16+channels_last+compile")
    assert (mode.dtype, mode.channels_last, mode.compile) == (torch.bfloat16, True, True)
    assert mode.memory_format == torch.channels_last
    fp32 = bench_models.Mode.parse("fp32")
    assert (fp32.compute_dtype, fp32.memory_format, fp32.compile) == (torch.float32, torch.contiguous_format, False)
    assert (mode.cudagraphs, fp32.cudagraphs) == (False, False)
    graphs = bench_models.Mode.parse("bf16+cudagraphs")
    assert (graphs.compile, graphs.cudagraphs, graphs.channels_last_graph) == (True, True, True)
    heuristic = bench_models.Mode.parse("bf16+inductor_layout")
    assert (heuristic.compile, heuristic.cudagraphs, heuristic.channels_last_graph) == (True, False, False)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown mode 'bf16\\+fast'"):
        bench_models.Mode.parse("bf16+fast")


def test_compiled_modes_reach_compile_network(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_models, "compile_network", lambda net, *args: calls.append(args) or net)
    model, schedule = torch.nn.Conv2d(1, 1, 1), NoiseSchedule(timesteps=10)
    x, t = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    cpu = torch.device("cpu")
    for name in ("compile", "cudagraphs", "compile+inductor_layout", "fp32"):
        bench_models.make_steps(model, bench_models.Mode.parse(name), cpu, schedule, x, x, t)
    assert calls == [(cpu, False, True), (cpu, True, True), (cpu, False, False)]


def test_a_yaml_path_uses_its_own_batch(repo_root, tmp_path):
    cfg = load_config(repo_root / "Configs" / "config.yaml")
    path = tmp_path / "config.yaml"  # a run's resolved config has the CelebA preset's file name
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (bench_models.preset_batch("config", cfg, cpu), bench_models.preset_batch("config", cfg, cuda)) == (4, 64)
    assert bench_models.preset_batch(str(path), cfg, cpu) == cfg.train.batch_size == 128


def test_plain_table_is_aligned():
    row = bench_models.Row("digits", "fp32", "ours", 100.0, 12.5, 0.13, 39.0, 0.5, 33.0, 0.45, 1.1, 1.05)
    wide = dataclasses.replace(row, preset="ddpm_cifar10", mode="bf16+channels_last+compile", train_img_s=12345.6)
    lines = bench_models.table_header(markdown=False) + [bench_models.table_line(r.cells(), False) for r in (row, wide)]
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["digits", "fp32", "ours", "100.0", "12.5", "0.13", "39.0", "50%", "33.0", "45%", "1.10", "1.05"]


def test_profiler_lists_the_operators_of_a_step_and_a_call(tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    profile_step.main(["--config", str(preset), "--device", "cpu", "--modes", "fp32", "channels_last", "--batch-size", "3",
                       "--calls", "1", "--rows", "4", "--threads", "1", "--trace", str(tmp_path / "trace.json")])
    out = capsys.readouterr().out
    assert out.startswith("tiny, 8x8, batch 3, fp32, cpu (1 thread(s))")
    assert "\n\n\ntiny, 8x8, batch 3, channels_last, cpu (1 thread(s))" in out
    for mode in ("fp32", "channels_last"):
        for label, op in (("train", "aten::convolution_backward"), ("sample", "aten::mkldnn_convolution")):
            section = out.split(f"batch 3, {mode}, ")[1].split(f"\n{label}: ")[1].split("\n\n")[0]
            assert section.split()[1:4] == ["ms", "per", "call"] and op in section
            assert len([line for line in section.splitlines() if line.lstrip().startswith("aten::")]) <= 4
            assert (tmp_path / f"trace-{mode}-{label}.json").stat().st_size > 0
            kinds = out.split(f"batch 3, {mode}, ")[1].split(f"\n{label} by kind: ")[1].split("\n")[0]
            parts = [part.rsplit(" ", 3) for part in kinds.split(", ")]  # kind, ms, "ms", (share)
            assert {"convolution", "normalisation"} <= {kind for kind, *_ in parts}
            ms = [float(value) for _, value, *_ in parts]
            assert ms == sorted(ms, reverse=True) and all(value > 0 for value in ms)
            assert "launches" not in kinds  # CPU operators nest: their calls are no count of work
    with pytest.raises(UserError, match="--calls"):
        profile_step.main(["--calls", "0"])


def test_profile_counts_each_kernel_once_by_kind():
    def event(key, device, us, annotation=False, count=2):
        on_cpu = device == DeviceType.CPU
        return SimpleNamespace(key=key, device_type=device, is_user_annotation=annotation, count=count,
                               self_cpu_time_total=us if on_cpu else 0, self_device_time_total=0 if on_cpu else us)

    cuda, cpu = DeviceType.CUDA, DeviceType.CPU
    events = [
        event("## Call CompiledFxGraph abc ##", cuda, 900.0, annotation=True),  # spans the kernels below
        event("aten::_fused_adamw_", cpu, 50.0),  # its own kernel's time again, as self device time
        event("void multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata>", cuda, 100.0),
        event("sm90_xmma_dgrad_implicit_gemm_bf16bf16_nhwc", cuda, 400.0),
        event("void cudnn::engines_precompiled::nchwToNhwcKernel<bf16>", cuda, 200.0),
        event("triton_poi_fused_add_convolution_native_group_norm_silu_3", cuda, 300.0),
        event("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", cuda, 50.0),
        event("Memset (Device)", cuda, 10.0),
        event("triton_red_fused_native_group_norm_backward_7", cuda, 60.0, count=6),
    ]
    by_kind = profile_step.totals_by_kind(events, torch.device("cuda"), calls=2)
    assert list(by_kind) == [
        "convolution", "fused (Triton)", "layout conversion", "optimizer", "attention", "other"]  # largest first
    assert {kind: total.seconds for kind, total in by_kind.items()} == pytest.approx({
        "convolution": 2e-4, "fused (Triton)": 1.8e-4, "layout conversion": 1e-4, "optimizer": 5e-5,
        "attention": 2.5e-5, "other": 5e-6,
    })
    assert by_kind["fused (Triton)"].launches == 4 and by_kind["convolution"].launches == 1
    assert profile_step.totals_by_kind(events, torch.device("cpu")) == {"optimizer": (5e-5, 2)}
    assert [profile_step.kind_of(n) for n in ("aten::native_group_norm", "aten::mm", "aten::silu")] == [
        "normalisation", "matrix product", "other"]


def test_gpu_script_checks_its_stages_and_the_gpu(repo_root, tmp_path):
    script = str(repo_root / "benchmarks" / "gpu.sh")
    env = {**subprocess_env(), "PYTHON": sys.executable}
    bad = subprocess.run(["bash", script, str(tmp_path), "tests", "speed"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown stage 'speed'" in bad.stderr
    swapped = subprocess.run(["bash", script, "cifar10"], capture_output=True, text=True, env=env)
    assert swapped.returncode == 2 and "'cifar10' is a stage" in swapped.stderr
    if not torch.cuda.is_available():
        no_gpu = subprocess.run(["bash", script, str(tmp_path), "tests"], capture_output=True, text=True, env=env)
        assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stderr


def test_data_benchmark_runs(repo_root):
    cmd = [sys.executable, str(repo_root / "benchmarks" / "bench_data.py"), "--images", "64", "--size", "16",
           "--batch-size", "16", "--workers", "0", "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "prepare img/s" in result.stdout and "batches img/s" in result.stdout
    assert "cpu, 1 torch thread(s)" in result.stdout


def spy_sampling(monkeypatch) -> list[tuple[bool, torch.dtype | None]]:
    """(channels-last weights, autocast dtype) of each reverse process bench_sampling runs."""
    runs, reverse_process = [], bench_sampling.reverse_process

    def spy(model, *args, **kwargs):
        runs.append((uses_channels_last(model), kwargs["autocast_dtype"]))
        return reverse_process(model, *args, **kwargs)

    monkeypatch.setattr(bench_sampling, "reverse_process", spy)
    return runs


def test_sampling_benchmark_extrapolates_from_a_few_steps(tmp_path, capsys, monkeypatch):
    runs = spy_sampling(monkeypatch)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    bench_sampling.main(["--config", str(preset), "--threads", "1", "--num-samples", "3", "--max-steps", "2",
                         "--channels-last", "--precision", "fp32"])  # auto would be bf16 on a CPU that has it
    out = capsys.readouterr().out
    kept = ", freed host memory kept" if platform.libc_ver()[0] == "glibc" else ""
    assert out.startswith(f"3 images, cpu, fp32, 1 thread(s), channels-last{kept}\n")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| tiny")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("ddpm", "1000"), ("ddim", "50"), ("dpm++", "20")]
    assert all(r[3].strip().endswith("(from 2 steps)") for r in rows)
    assert runs == [(True, None)] * 4  # a warm-up and the three samplers


def test_sampling_benchmark_runs_under_autocast(tmp_path, capsys, monkeypatch):
    runs = spy_sampling(monkeypatch)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    bench_sampling.main(["--preset", str(preset), "--threads", "1", "--num-samples", "2", "--max-steps", "1",
                         "--precision", "bf16", "--default-allocator"])
    out = capsys.readouterr().out
    assert out.startswith("2 images, cpu, bf16, 1 thread(s)\n")
    assert len([line for line in out.splitlines() if line.startswith("| tiny")]) == 3
    assert runs == [(False, torch.bfloat16)] * 4


def test_sampling_benchmark_times_guided_steps_as_one_call_on_a_doubled_batch(tmp_path, capsys, monkeypatch):
    batches = []
    forward = UNet.forward

    def spy(self, x, t, labels=None):
        batches.append((len(x), labels is not None))
        return forward(self, x, t, labels)

    monkeypatch.setattr(UNet, "forward", spy)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY))
    bench_sampling.main(["--config", str(preset), "--threads", "1", "--num-samples", "3", "--max-steps", "1",
                         "--guidance-scale", "4"])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| tiny")]
    assert [(r[1], r[3]) for r in rows] == [(s, g) for s in ("ddpm", "ddim", "dpm++") for g in ("1", "4")]
    # A warm-up (2 steps), then per sampler one unguided and one guided step.
    assert batches == [(3, True)] * 2 + [(3, True), (6, True)] * 3


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_allocator_benchmark_compares_the_two_settings_in_fresh_processes(capsys):
    bench_allocator.main(["--preset", "digits", "--threads", "1", "--rounds", "1", "--calls", "3"])
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines() if line.startswith("| digits")]
    assert [(r[1], r[2]) for r in rows] == [
        ("train", "glibc default"), ("train", "freed memory kept"),
        ("sample", "glibc default"), ("sample", "freed memory kept"),
    ]
    faults = {(r[1], r[2]): int(r[5]) for r in rows}
    assert faults["train", "freed memory kept"] < faults["train", "glibc default"]  # thousands fewer per step


def test_allocator_benchmark_names_a_failed_measurement(tmp_path):
    with pytest.raises(UserError, match="argument --rounds: expected a positive integer, got 0"):
        bench_allocator.main(["--rounds", "0"])
    with pytest.raises(UserError, match=r"^the default train measurement of .*missing\.yaml failed: "):
        bench_allocator.main(["--config", str(tmp_path / "missing.yaml"), "--rounds", "1", "--calls", "1"])


def test_sampling_benchmark_rejects_bad_flags():
    with pytest.raises(UserError, match="--max-steps"):
        bench_sampling.main(["--max-steps", "0"])


def test_data_benchmark_needs_a_batch_of_images_and_a_thread():
    with pytest.raises(UserError, match="--images"):
        bench_data.main(["--images", "8", "--batch-size", "16"])
    with pytest.raises(UserError, match="argument --threads: expected a positive integer, got 0"):
        bench_data.main(["--threads", "0"])


def test_train_step_benchmark_times_each_variant_and_its_steps_at_equal_time(tmp_path, capsys):
    small = "train.batch_size=4 train.steps=100 log.sample_every=0"
    variants = [small, f"{small} model.base_channels=8 model.norm_groups=4 model.attention_resolutions=[]"]
    bench_train_step.main(["--config", "digits", "--threads", "1", "--rounds", "2", "--steps", "1",
                           "--root", str(tmp_path), "--variants", *variants])
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| train.")]
    assert [r[0] for r in rows] == variants
    assert all(len(r[2].split()) == 2 for r in rows)  # one time per round
    assert rows[0][3:] == ["1.00", "100"]
    assert abs(int(rows[1][4]) - 100 * float(rows[1][3])) <= 1  # 100 steps times its speed (both rounded)
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"]  # the data cache; the runs were temporary
    with pytest.raises(UserError, match="model.base_channels"):
        bench_train_step.main(["--root", str(tmp_path), "--variants", "model.base_channels=many"])


def digits_run(repo_root, tmp_path, *overrides: str):
    """A one-step run of the digits preset with a small U-Net, under ``tmp_path``."""
    small = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.norm_groups=4", "model.num_res_blocks=1",
             "model.attention_resolutions=[]", "train.steps=1", "train.batch_size=4", "train.device=cpu",
             "log.sample_every=0", f"log.root={tmp_path}", "log.run_name=run", f"data.root={tmp_path / 'Data'}"]
    return train(load_config(repo_root / "Configs" / "digits.yaml", [*small, *overrides]))


@pytest.mark.slow
def test_digits_quality_scores_a_digits_checkpoint(repo_root, tmp_path, capsys, monkeypatch):
    run = digits_run(repo_root, tmp_path, "sample.sampler=ddim", "sample.steps=3", "train.posthoc_ema=[0.05,0.1]")
    with pytest.raises(UserError, match="--samplers: expected default or ddpm, ddim, dpm\\+\\+"):
        digits_quality.main(["--checkpoint", str(run), "--samplers", "euler"])
    with pytest.raises(UserError, match=re.escape(":beta|beta_tilde|analytic, got 'ddpm:2:wide'")):
        digits_quality.main(["--checkpoint", str(run), "--samplers", "ddpm:2:wide"])
    with pytest.raises(UserError, match=re.escape("--samplers 'ddpm:2000': sample.steps: 2000 is more than diffusion.timesteps")):
        digits_quality.main(["--checkpoint", str(run), "--samplers", "ddpm:2000"])
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "default", "default:2", "dpm++:2",
                                "ddpm:2:analytic", "--num-samples", "12", "--root", str(tmp_path / "Data")]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ema")]
    assert [(r[1], r[2]) for r in rows] == [("ddim", "3"), ("ddim", "2"), ("dpm++", "2"), ("ddpm (analytic)", "2")]
    assert all(float(r[3]) >= 0 for r in rows)  # an FID per sampler
    loads = []
    monkeypatch.setattr(digits_quality, "load_model", lambda path, **kw: loads.append(kw) or load_model(path, **kw))
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "default", "--num-samples", "12",
                                "--root", str(tmp_path / "Data"), "--no-ema"]) == 0
    assert loads == [{"use_ema": False, "ema_length": "config"}]
    assert "| model | ddim | 3 |" in capsys.readouterr().out
    with pytest.raises(UserError, match="--no-ema and --ema-length"):
        digits_quality.main(["--checkpoint", str(run), "--no-ema", "--ema-length", "0.1"])
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "default:2", "--num-samples", "12",
                                "--root", str(tmp_path / "Data"), "--ema-length", "none", "0.1", "0.2"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r[0] for r in rows[1:]] == ["| ema", "| post-hoc EMA 0.1", "| post-hoc EMA 0.2"]
    assert (tmp_path / "Data" / "cache" / "digits16_classifier_seed0_epochs30.pt").is_file()


@pytest.mark.slow
def test_digits_quality_samples_a_class_model_in_the_data_class_mix(repo_root, tmp_path, capsys, monkeypatch):
    run = digits_run(repo_root, tmp_path, "model.num_classes=10", "sample.guidance_scale=2")
    asked, scales = [], []

    def spy(model, schedule, options, **kwargs):
        asked.append(kwargs["labels"])
        scales.append(options.guidance_scale)
        return generate_from(model, schedule, options, **kwargs)

    monkeypatch.setattr(digits_quality, "generate_from", spy)
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "ddim:2", "--num-samples", "200",
                                "--root", str(tmp_path / "Data")]) == 0
    out = capsys.readouterr().out
    assert "class-conditional: labels in the training data's class mix, guidance scale 2.0" in out
    assert "stratified labels): FID mean" in out and "| x perfect |" in out
    share = torch.bincount(digits_quality.digits_data(str(tmp_path / "Data"))[1], minlength=10) / 1797
    counts = torch.bincount(asked[0], minlength=10)
    assert len(asked[0]) == 200 and ((counts - 200 * share).abs() < 1).all()  # the data's class mix exactly
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "ddim:2", "--num-samples", "200",
                                "--root", str(tmp_path / "Data"), "--labels", "drawn", "--real-subsets", "0"]) == 0
    assert "labels drawn from the training data's class mix" in capsys.readouterr().out
    counts = torch.bincount(asked[1], minlength=10)
    assert ((counts - 200 * share).abs() >= 1).any() and counts.min() >= 8 and counts.max() <= 35  # about 20 per digit
    assert digits_quality.main(["--checkpoint", str(run), "--samplers", "ddim:2", "--num-samples", "20",
                                "--root", str(tmp_path / "Data"), "--guidance-scale", "0.5"]) == 0
    assert "guidance scale 0.5" in capsys.readouterr().out and scales == [2.0, 2.0, 0.5]
    plain = digits_run(repo_root, tmp_path / "plain", "model.num_classes=0")
    with pytest.raises(UserError, match="--guidance-scale: the model is unconditional"):
        digits_quality.main(["--checkpoint", str(plain), "--guidance-scale", "2"])


def test_the_digit_classifier_depends_only_on_its_seed(tmp_path):
    """Its features set the FID scale, so it must depend neither on the global RNG's state nor on
    the thread count."""
    first = digits_quality.trained_classifier(str(tmp_path / "a"), seed=3, epochs=1)
    torch.rand(7)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # another thread count
    try:
        second = digits_quality.trained_classifier(str(tmp_path / "b"), seed=3, epochs=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    other = digits_quality.trained_classifier(str(tmp_path / "c"), seed=4, epochs=1)
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)
    assert (tmp_path / "a" / "cache" / "digits16_classifier_seed3_epochs1.pt").is_file()


def test_digits_quality_real_subsets_average_the_floor_over_disjoint_sets(monkeypatch, capsys):
    torch.manual_seed(0)
    real = torch.rand(30, 1, 16, 16) * 2 - 1
    monkeypatch.setattr(digits_quality, "trained_classifier", lambda root: digits_quality.DigitClassifier().eval())
    monkeypatch.setattr(digits_quality, "digits_data", lambda root: (real, torch.arange(30) % 3))
    before = torch.get_num_threads()
    try:
        assert digits_quality.main(["--real-subsets", "3", "--num-samples", "10", "--threads", "1",
                                    "--perfect-draws", "2"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("real vs real (3 disjoint sets of 10 training images): FID ")
    assert len(lines[0].split("FID ")[1].split(", mean")[0].split()) == 3
    assert lines[1].startswith("perfect model (2 draws of 10 training images, i.i.d.): FID mean ")
    assert lines[2].startswith("perfect model (2 draws of 10 training images, i.i.d., stratified labels): FID mean ")
    classifier = digits_quality.DigitClassifier().eval()
    fids = digits_quality.real_floor(classifier, real, digits_quality.real_statistics(classifier, real), 10, 3, seed=1)
    assert len(set(fids)) == 3  # three different subsets
    with pytest.raises(UserError, match="--real-subsets: 4 disjoint sets of 10 need 40 images, the digits have 30"):
        digits_quality.main(["--real-subsets", "4", "--num-samples", "10"])
    assert digits_quality.main(["--real-subsets", "0", "--num-samples", "40", "--perfect-draws", "1"]) == 0
    assert [line.split(" (")[0] for line in capsys.readouterr().out.splitlines()] == ["perfect model"] * 2  # no real vs real
    with pytest.raises(UserError, match="--real-subsets: expected an integer >= 0, got -1"):
        digits_quality.main(["--real-subsets", "-1"])
    with pytest.raises(UserError, match="--perfect-draws: expected a positive integer, got 0"):
        digits_quality.main(["--perfect-draws", "0"])


def test_the_perfect_model_draws_training_images_as_the_samples_are(monkeypatch):
    """Image i of the class asked for by label i (16 of class 0, from its 10: with replacement); any image without labels."""
    real_labels = torch.arange(30) % 3
    real = real_labels.float().view(30, 1, 1, 1).expand(30, 1, 16, 16) + torch.arange(30).view(30, 1, 1, 1) / 100
    drawn = []
    monkeypatch.setattr(digits_quality, "quality", lambda classifier, images, reference: drawn.append(images) or {"fid": len(drawn)})
    asked = torch.tensor([2, 0, 1, 1, 2, 2, 0, 0, 0, 1] * 4)
    fids = digits_quality.perfect_model(None, real, None, real_labels, asked, 40, draws=3, seed=5)
    assert fids == [1, 2, 3] and all(len(images) == 40 for images in drawn)
    for images in drawn:
        assert torch.equal(images[:, 0, 0, 0].floor().long(), asked)  # each of its class
    assert len({tuple(images[:, 0, 0, 0].tolist()) for images in drawn}) == 3  # independent draws
    plain = digits_quality.perfect_model(None, real, None, real_labels, None, 40, draws=1, seed=5)
    assert plain == [4] and len(set(drawn[-1][:, 0, 0, 0].floor().tolist())) == 3  # every class turns up


def test_digits_quality_refuses_other_models(repo_root, tmp_path):
    run = digits_run(repo_root, tmp_path, "data.image_size=8", "model.image_size=8")
    with pytest.raises(UserError, match="not a 16x16 digits model"):
        digits_quality.main(["--checkpoint", str(run)])


def test_emulated_bf16_kernels_round_like_bf16_autocast():
    """The emulation matches the CPU's own bf16 convolution forward to the bit (fp32 accumulation
    of bf16 inputs, bf16 output); linear layers, attention and convolution backward within about
    a bf16 ulp; outside bf16 autocast fp32 stays fp32."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=gen, requires_grad=True)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    linear = torch.nn.Linear(8, 24)
    q = torch.randn(2, 1, 12, 8, generator=gen)
    grad = torch.randn(2, 16, 6, 6, generator=gen)

    def run(emulate: bool, autocast: bool = True):
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with cpu_bf16.EmulatedBF16Kernels() if emulate else contextlib.nullcontext():
                y = conv(x)
                outs = (y, linear(x.flatten(2).transpose(1, 2)), F.scaled_dot_product_attention(q, 0.5 * q, 2 * q))
        y.backward(grad.to(y.dtype))
        return [o.float() for o in outs] + [x.grad.clone()]

    real, emulated = run(False), run(True)
    assert [o.dtype for o in emulated[:3]] == [torch.float32] * 3  # compared as float; both were bf16
    assert (emulated[0] == real[0]).float().mean() > 0.999  # convolution: all but rare rounding ties
    for e, r in zip(emulated[1:], real[1:], strict=True):  # linear, attention, convolution backward
        assert ((e - r).norm() / r.norm()) < 2**-7
    fp32 = run(False, autocast=False)
    assert not torch.equal(emulated[0], fp32[0])  # the emulation does round
    assert all(torch.equal(a, b) for a, b in zip(run(True, autocast=False), fp32, strict=True))


def test_bf16_check_flags_choose_the_kernels(monkeypatch, tmp_path, capsys):
    emulated = []
    monkeypatch.setattr(cpu_bf16, "train_run", lambda p, s, steps, out, emulate, root: emulated.append(emulate) or tmp_path)
    monkeypatch.setattr(cpu_bf16, "logged_losses", lambda run: {10: 0.5})
    monkeypatch.setattr(cpu_bf16, "sample_quality", lambda *a: {"fid": 1.0, "confident": 1.0, "min_class_share": 0.1})
    monkeypatch.setattr(cpu_bf16, "trained_classifier", lambda root: None)
    monkeypatch.setattr(cpu_bf16, "real_statistics", lambda classifier, real: None)
    for kernels, has_bf16, expected in (("auto", False, True), ("auto", True, False), ("native", False, False),
                                        ("emulated", True, True)):
        monkeypatch.setattr(cpu_bf16, "cpu_has_bf16", lambda v=has_bf16: v)
        cpu_bf16.main(["--kernels", kernels, "--seeds", "3", "--out", str(tmp_path)])
        assert emulated[-2:] == [expected, expected]  # the fp32 run gets the flag too and ignores it
        assert capsys.readouterr().out.startswith("emulated" if expected else "native")
    with pytest.raises(UserError, match="--steps must be at least 1"):
        cpu_bf16.main(["--steps", "0"])


@pytest.mark.slow
def test_bf16_check_trains_both_precisions_and_scores_them(repo_root, tmp_path, capsys):
    data = str(tmp_path / "Data")
    cpu_bf16.main(["--steps", "3", "--seeds", "0", "--num-samples", "4", "--out", str(tmp_path), "--root", data,
                   "--cross-sample"])
    out = capsys.readouterr().out
    (folder,) = tmp_path.glob("cpu-bf16-*")
    assert sorted(p.name for p in folder.iterdir()) == ["bf16-seed0", "fp32-seed0"]
    losses = [line.split(" | ") for line in out.splitlines() if line.startswith("| 3 |")]
    assert len(losses) == 1 and all(0.5 < float(cell.split()[0]) < 1.5 for cell in losses[0][1:])
    scores = [[c.strip() for c in line.split("|")[1:4]] for line in out.splitlines()
              if line.startswith(("| fp32 | 0 |", "| bf16 | 0 |"))]
    assert scores == [["fp32", "0", "fp32"], ["fp32", "0", "bf16"], ["bf16", "0", "bf16"], ["bf16", "0", "fp32"]]
    assert yaml.safe_load((folder / "bf16-seed0" / "config.yaml").read_text())["train"]["precision"] == "bf16"


@needs_diffusers
@pytest.mark.slow
def test_import_benchmark_prints_differences_and_timings(monkeypatch, capsys):
    """At the reduced widths of the import tests; the benchmark's own layouts are full width."""
    from test_pretrained import LAYOUTS

    monkeypatch.setattr(bench_import, "LAYOUTS", LAYOUTS)
    monkeypatch.setenv("DDPM_CACHE", "")  # restored after the benchmark sets its own
    bench_import.main(["--repeats", "1", "--calls", "1", "--batch-size", "1"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in out.splitlines() if line.startswith("| cifar10") or line.startswith("| 256px")}
    assert set(rows) == {"cifar10", "256px"} and all(float(diff) <= 1e-4 for diff in rows.values())
    assert "| imported (tf_same padding) |" in out and "| native (symmetric padding) |" in out
