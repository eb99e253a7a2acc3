"""Where the time of a training step and of a sampling network call goes: torch.profiler's
operator table, sorted by the time each operator's own kernels take on the device.

The step is the one ``bench_models.py`` times (forward, L_simple loss, backward, fused AdamW),
on our U-Net in each of the modes given, one after the other. Besides the tables it prints the
wall time per call, the share of it the device spent in kernels (a low share means the step
waits on the host: kernel launches, Python; a high one that the kernels themselves are slow) and
that kernel time by kind: convolutions, layout conversions, fused Triton kernels, attention,
matrix products, the optimizer, the rest, with the kernel launches of each kind (many short
kernels point at launch latency and tails). Each kernel counts once: not again for the operator
that launched it, nor for the profiler's annotation ranges around compiled graphs and optimizer
steps. On a CPU the kinds sort the operators' own times.

    python benchmarks/profile_step.py [--config ddpm_cifar10] [--device cuda] [--modes bf16+compile ...]
                                      [--batch-size 128] [--calls 5] [--rows 25] [--trace trace.json]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_models import (
    Mode,
    fixed_batch,
    load_preset,
    make_steps,
    preset_batch,
    synchronize,
)
from diffusion.cli import (
    Parser,
    add_config_flag,
    add_device_flag,
    add_threads_flag,
    positive_int,
    set_threads,
)
from diffusion.device import resolve_device
from diffusion.errors import run_cli
from diffusion.schedule import NoiseSchedule
from models import build_model

# Kinds of kernels (CUDA) or operators (CPU), by a substring of the lower-case name; the first
# match wins (Triton kernels' names list the operators they fuse, convolution among them).
KINDS = (
    ("layout conversion", ("nchwtonhwc", "nhwctonchw")),
    ("fused (Triton)", ("triton",)),
    ("attention", ("attention", "flash", "fmha", "sdpa")),
    ("optimizer", ("adam", "multi_tensor_apply")),
    ("convolution", ("conv", "dgrad", "wgrad", "fprop", "xmma")),
    ("matrix product", ("gemm", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm")),
    ("normalisation", ("group_norm",)),
)


def kind_of(name: str) -> str:
    """The kind of a kernel or operator name (``other`` when none matches)."""
    lower = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lower for key in keys)), "other")


class KindTotal(NamedTuple):
    seconds: float
    launches: float  # kernels launched (CUDA); operators called, nested ones included (CPU)


def totals_by_kind(events: Iterable[Any], device: torch.device, calls: int = 1) -> dict[str, KindTotal]:
    """Seconds and launches per kind, per profiled call (``calls`` of them), largest time first,
    over profiler events (``key_averages()``): on CUDA the device's own events (kernels, copies),
    each counted once (an operator's self device time repeats its kernels'); on a CPU the
    operators' self time. Annotation ranges are left out."""
    totals: dict[str, KindTotal] = {}
    for event in events:
        on_device = event.device_type != DeviceType.CPU
        if event.is_user_annotation or on_device != (device.type == "cuda"):
            continue
        kind = kind_of(event.key)
        seconds = (event.self_device_time_total if on_device else event.self_cpu_time_total) / 1e6 / calls
        seconds_so_far, launches_so_far = totals.get(kind, (0.0, 0.0))
        totals[kind] = KindTotal(seconds_so_far + seconds, launches_so_far + event.count / calls)
    return dict(sorted(totals.items(), key=lambda item: -item[1].seconds))


def profile_calls(
    fn: Callable[[], None], calls: int, device: torch.device, trace: Path | None
) -> tuple[str, float, dict[str, KindTotal]]:
    """Profile ``calls`` calls of ``fn`` after three warm-up calls. Returns the operator table
    (sorted by self device time; CPU: self CPU time), the wall seconds per call, and the
    seconds and launches per call by kind of kernel (:func:`totals_by_kind`)."""
    for _ in range(3):
        fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        wall = (time.perf_counter() - start) / calls
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    averages = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return averages.table(sort_by=key, row_limit=-1), wall, totals_by_kind(averages, device, calls)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(__doc__)
    add_config_flag(parser, default="ddpm_cifar10")
    add_device_flag(parser)
    parser.add_argument("--modes", nargs="+", type=Mode.parse, default=None,
                        help="fp32 or +-joined bf16, channels_last, compile, cudagraphs, inductor_layout; several"
                        " are profiled in turn (default: bf16+compile on CUDA, fp32 on CPU)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="images per call (default: as bench_models.py)")
    parser.add_argument("--calls", type=positive_int, default=5, help="profiled calls of each kind (default 5)")
    parser.add_argument("--rows", type=positive_int, default=25, help="operators listed per table (default 25)")
    add_threads_flag(parser)
    parser.add_argument("--trace", type=Path, default=None,
                        help="also write Chrome traces: PATH with -MODE-train / -MODE-sample before its suffix")
    args = parser.parse_args(argv)
    device = resolve_device(args.device, "--device")
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in the trainer
    set_threads(args.threads)
    modes = args.modes or [Mode.parse("bf16+compile" if device.type == "cuda" else "fp32")]
    name, cfg = load_preset(args.config)
    batch = args.batch_size or preset_batch(args.config, cfg, device)
    size = cfg.model.image_size
    x0, noise, t = fixed_batch(cfg, batch, device)
    schedule = NoiseSchedule.from_config(cfg.diffusion).to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} thread(s)"
    for i, mode in enumerate(modes):
        train_step, sample_call = make_steps(build_model(cfg), mode, device, schedule, x0, noise, t)
        print(f"{chr(10) * 2 if i else ''}{name}, {size}x{size}, batch {batch}, {mode.name}, {device} ({where})")
        for label, fn in (("train", train_step), ("sample", sample_call)):
            trace = args.trace.with_name(f"{args.trace.stem}-{mode.name}-{label}{args.trace.suffix}") if args.trace else None
            table, wall, kinds = profile_calls(fn, args.calls, device, trace)
            lines = table.splitlines()
            total = sum(seconds for seconds, _ in kinds.values())
            share = f", {100 * total / wall:.0f}% of it in device kernels" if device.type == "cuda" else ""
            print(f"\n{label}: {1e3 * wall:.2f} ms per call{share}")
            print("\n".join(lines[: 3 + args.rows] + lines[-2:]))
            on_gpu = device.type == "cuda"
            print(f"{label} by kind:", ", ".join(
                f"{kind} {1e3 * sec:.2f} ms ({100 * sec / total:.0f}%" + (f", {n:.0f} launches)" if on_gpu else ")")
                for kind, (sec, n) in kinds.items()))


if __name__ == "__main__":
    run_cli(main)
