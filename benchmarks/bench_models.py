"""Speed of the U-Net against diffusers' ``UNet2DModel`` built to the same architecture.

For each preset and each mode (fp32 first, then any ``+``-joined combination of bf16 autocast,
channels_last, torch.compile, cudagraphs, which is torch.compile's ``reduce-overhead`` mode: the
compiled calls replayed as CUDA graphs, and inductor_layout: on CUDA, the compiled graph's layout
left to inductor's heuristic instead of channels-last) both networks are timed in one process, alternating
ours / diffusers at every repetition so that background load hits both alike; each figure is
the median of ``--repeats`` timed calls after two warm-up calls. Rows are printed as each mode
is measured (its time goes to stderr), so a run cut short keeps what it measured.

* train img/s: forward, L_simple loss (Ho et al. eq. 14), backward and a fused AdamW step;
* sample ms: one network call under ``torch.inference_mode`` (a sampler step's cost);
* GFLOP/img: matmul, convolution and attention FLOPs of one forward pass (torch.utils.flop_counter);
* GFLOP/s and % peak: achieved throughput (forward + backward FLOPs for training) against the
  best of a large matmul and a 3x3 convolution in the same dtype, measured by this script;
* x diffusers: speed relative to diffusers in fp32 (the reference a user would otherwise run).

``--diffusers-modes`` limits the modes in which diffusers runs too (fp32, the reference, always
does): each compiled mode costs two compilations per model, minutes on a GPU lease.

    python benchmarks/bench_models.py [--config ddpm_cifar10 digits] [--device cpu] [--threads 1]
                                      [--repeats 5] [--modes bf16 channels_last+compile] [--markdown]
                                      [--diffusers-modes fp32 bf16]

diffusers is an optional dependency (``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils import flop_counter

from diffusion.cli import (
    Parser,
    add_config_flag,
    add_device_flag,
    add_threads_flag,
    config_path,
    positive_int,
    set_threads,
)
from diffusion.config import Config, ModelConfig, load_config
from diffusion.device import compile_network, resolve_device, tune_host_allocator
from diffusion.diffusers_format import unet_config
from diffusion.errors import UserError, run_cli
from diffusion.schedule import NoiseSchedule
from models import UNet

# Batch sizes of the tables in docs/results.md: small on a CPU, a training batch on a GPU.
PRESET_BATCH = {
    "cpu": {"ddpm_cifar10": 8, "digits": 64, "config": 4},
    "cuda": {"ddpm_cifar10": 128, "digits": 64, "config": 64},
}
COLUMNS = (
    "preset", "mode", "model", "train img/s", "sample ms", "GFLOP/img",
    "train GFLOP/s", "train % peak", "sample GFLOP/s", "sample % peak", "train x diffusers", "sample x diffusers",
)


def _cpu_attention_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _cpu_attention_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


# The CPU flash-attention kernels are missing from torch's FLOP table; count them like the CUDA ones.
ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


@dataclass(frozen=True)
class Mode:
    """How both networks run: autocast dtype (None: fp32), memory format, torch.compile, whether
    the compiled calls are replayed as CUDA graphs and whether a compiled graph keeps channels-last
    activations on CUDA (``diffusion.device.compile_network``; ``inductor_layout`` turns it off)."""

    name: str
    dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    cudagraphs: bool = False
    channels_last_graph: bool = True

    @classmethod
    def parse(cls, name: str) -> Mode:
        """``fp32``, or ``+``-joined options among bf16, channels_last, compile, cudagraphs,
        inductor_layout (``bf16+compile``; cudagraphs and inductor_layout imply compile)."""
        options = set(name.split("+")) - {"fp32"}
        unknown = options - {"bf16", "channels_last", "compile", "cudagraphs", "inductor_layout"}
        if unknown or not name:
            raise argparse.ArgumentTypeError(
                f"unknown mode '{name}': use fp32 or +-joined bf16, channels_last, compile, cudagraphs, inductor_layout"
            )
        cudagraphs, inductor_layout = "cudagraphs" in options, "inductor_layout" in options
        return cls(
            name, torch.bfloat16 if "bf16" in options else None, "channels_last" in options,
            "compile" in options or cudagraphs or inductor_layout, cudagraphs, not inductor_layout,
        )

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype or torch.float32

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


DEFAULT_MODES = ("fp32", "bf16", "channels_last")


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` with the same widths, depths, attention levels and norms as
    ``UNet(**model_cfg)`` (the config ``diffusion.export`` writes), called as ``model(x, t)`` like ours."""

    def __init__(self, m: ModelConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.net = UNet2DModel(**{k: v for k, v in unet_config(m).items() if not k.startswith("_")})

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_size(pair: dict[str, nn.Module]) -> None:
    """Equal architectures have equal parameter counts; allow 1% for implementation details."""
    n_ours, n_theirs = (parameter_count(model) for model in pair.values())
    if abs(n_ours - n_theirs) > 0.01 * n_theirs:
        raise AssertionError(f"not the same architecture: {n_ours} parameters (ours) vs {n_theirs} (diffusers)")


def build_pair(m: ModelConfig) -> dict[str, nn.Module]:
    """Our U-Net and its diffusers twin, checked to be of the same size."""
    try:
        theirs = DiffusersUNet(m)
    except ImportError as err:
        raise UserError(f"the benchmark needs diffusers ({err}); install it with pip install '.[bench]'") from None
    pair = {"ours": UNet(**vars(m)), "diffusers": theirs}
    check_same_size(pair)
    return pair


def add_allocator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's allocator as it is (default: keep freed host memory on a CPU, as"
                        " train.py and inference.py do)")


def set_up_allocator(args: argparse.Namespace, device: torch.device) -> bool:
    """Keep freed host memory unless ``--default-allocator``; whether it is kept."""
    return not args.default_allocator and tune_host_allocator(device)


def preset_batch(preset: str, cfg: Config, device: torch.device) -> int:
    """The results tables' batch for a preset name; a YAML path (even one named ``config.yaml``)
    uses its own ``train.batch_size``."""
    return PRESET_BATCH[device.type].get(preset, cfg.train.batch_size)


def load_preset(preset: str) -> tuple[str, Config]:
    """A preset name (``Configs/<name>.yaml``) or the path of a YAML config."""
    path = config_path(preset)
    return path.stem, load_config(path)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function after two warm-ups, alternating them call by call
    (in A B B A order, so neither always runs first)."""
    for _ in range(2):
        for fn in fns.values():
            seconds(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for repeat in range(repeats):
        for name in list(fns) if repeat % 2 == 0 else reversed(fns):
            times[name].append(seconds(fns[name], device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_gflops(dtype: torch.dtype, device: torch.device) -> float:
    """Best measured throughput of a square matmul and a 3x3 convolution (256 channels, 16x16,
    channels-last) in ``dtype``; sizes grow until one call takes 20 ms (capped), so that slow
    dtypes are measured quickly."""

    def best(make: Callable[[int], tuple[Callable[[], object], float]], sizes: list[int]) -> float:
        rate = 0.0
        for size in sizes:
            fn, flop = make(size)
            fn()
            elapsed = min(seconds(fn, device) for _ in range(5))
            rate = max(rate, flop / elapsed / 1e9)
            if elapsed > 0.02:
                break
        return rate

    def matmul(n: int) -> tuple[Callable[[], object], float]:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        return (lambda: a @ b), 2.0 * n**3

    def conv(batch: int) -> tuple[Callable[[], object], float]:
        layer = nn.Conv2d(256, 256, 3, padding=1).to(device, dtype, memory_format=torch.channels_last)
        x = torch.randn(batch, 256, 16, 16, device=device, dtype=dtype).to(memory_format=torch.channels_last)
        return (lambda: layer(x)), 2.0 * batch * 256 * 256 * 9 * 16 * 16

    big = device.type == "cuda"
    with torch.inference_mode():
        return max(
            best(matmul, [256, 512, 1024, 2048] + ([4096, 8192] if big else [])),
            best(conv, [1, 4, 16] + ([64, 256] if big else [])),
        )


def gflop_per_image(model: nn.Module, x: torch.Tensor, t: torch.Tensor, backward: bool) -> float:
    """FLOPs of a forward (and backward) pass, per image, in GFLOP."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOPS) as counter:
        out = model(x, t)
        if backward:
            out.square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0] / 1e9


@dataclass
class Row:
    preset: str
    mode: str
    model: str
    train_img_s: float
    sample_ms: float
    gflop: float
    train_gflops: float
    train_peak: float
    sample_gflops: float
    sample_peak: float
    train_x: float
    sample_x: float

    def cells(self) -> list[str]:
        return [
            self.preset, self.mode, self.model, f"{self.train_img_s:.{1 if self.train_img_s >= 10 else 2}f}",
            f"{self.sample_ms:.1f}",
            f"{self.gflop:.2f}", f"{self.train_gflops:.1f}", f"{100 * self.train_peak:.0f}%",
            f"{self.sample_gflops:.1f}", f"{100 * self.sample_peak:.0f}%", f"{self.train_x:.2f}", f"{self.sample_x:.2f}",
        ]


def fixed_batch(cfg: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded batch for ``cfg``'s model: images x0 in [-1, 1], noise and timesteps t."""
    size, channels = cfg.model.image_size, cfg.model.in_channels
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, channels, size, size, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, cfg.diffusion.timesteps, (batch,), generator=gen)
    return x0.to(device), noise.to(device), t.to(device)


def make_steps(
    module: nn.Module, mode: Mode, device: torch.device, schedule: NoiseSchedule,
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A training step and a sampling network call on a fresh copy of ``module`` in ``mode``
    (the images and noise are copied to the mode's memory format)."""
    model = copy.deepcopy(module).to(device, memory_format=mode.memory_format)
    x0, noise = (x.contiguous(memory_format=mode.memory_format) for x in (x0, noise))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=True)  # CPU and CUDA since torch 2.4
    net = compile_network(model, device, mode.cudagraphs, mode.channels_last_graph) if mode.compile else model

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=mode.compute_dtype, enabled=mode.dtype is not None)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = schedule.training_loss(net, x0, t, noise)
        loss.backward()
        optimizer.step()

    def sample_call() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            net(noise, t)

    return train_step, sample_call


def bench_preset(
    preset: str, cfg: Config, modes: list[Mode], batch: int, device: torch.device, repeats: int,
    peaks: dict[torch.dtype, float], diffusers_modes: set[str],
) -> tuple[str, Iterator[Row]]:
    """A note on the preset, and its rows, measured mode by mode as they are iterated: in each
    mode a training step and a network call of our model (and of diffusers' in
    ``diffusers_modes``) are timed call by call in turn. Speed-ups are against diffusers in fp32,
    the first mode."""
    size, channels = cfg.model.image_size, cfg.model.in_channels
    pair = build_pair(cfg.model)
    note = (
        f"{preset}: {size}x{size}, batch {batch}, parameters "
        + " / ".join(f"{parameter_count(m) / 1e6:.2f}M ({name})" for name, m in pair.items())
    )

    def rows() -> Iterator[Row]:
        x = torch.randn(1, channels, size, size)
        t = torch.tensor([cfg.diffusion.timesteps // 2])
        flops = {
            name: (gflop_per_image(m.eval(), x, t, backward=False), gflop_per_image(m.train(), x, t, backward=True))
            for name, m in pair.items()
        }
        schedule = NoiseSchedule.from_config(cfg.diffusion).to(device)
        x0, noise, t = fixed_batch(cfg, batch, device)
        reference: tuple[float, float] | None = None  # diffusers' fp32 seconds: train step, network call
        for mode in modes:
            began = time.perf_counter()
            steps = {
                name: make_steps(module, mode, device, schedule, x0, noise, t)
                for name, module in pair.items()
                if name == "ours" or mode.name in diffusers_modes
            }
            train_s = interleaved_medians({name: train for name, (train, _) in steps.items()}, repeats, device)
            sample_s = interleaved_medians({name: sample for name, (_, sample) in steps.items()}, repeats, device)
            reference = reference or (train_s["diffusers"], sample_s["diffusers"])
            print(f"{preset} {mode.name}: measured in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
            for name in steps:
                forward, train = flops[name]
                train_gflops = train * batch / train_s[name]
                sample_gflops = forward * batch / sample_s[name]
                peak = peaks[mode.compute_dtype]
                yield Row(
                    preset, mode.name, name, batch / train_s[name], 1e3 * sample_s[name], forward,
                    train_gflops, train_gflops / peak, sample_gflops, sample_gflops / peak,
                    reference[0] / train_s[name], reference[1] / sample_s[name],
                )
            del steps
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return note, rows()


def run_benchmark(
    presets: list[str], modes: list[Mode], device: torch.device, repeats: int,
    diffusers_modes: list[Mode] | None = None,
) -> tuple[list[str], Iterator[str | Row]]:
    """Notes on the machine (peaks, skipped modes), then the presets' notes and rows as they are
    measured. fp32 is always measured for both models, first: it is the reference of the speed-up
    columns. diffusers runs in ``diffusers_modes`` (default: every mode)."""
    modes = list({mode.name: mode for mode in [Mode("fp32"), *modes]}.values())
    diffusers_names = {"fp32"} | {m.name for m in (modes if diffusers_modes is None else diffusers_modes)}
    peaks = {dtype: peak_gflops(dtype, device) for dtype in {m.compute_dtype for m in modes}}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    notes = [
        f"{name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); measured peak GFLOP/s: "
        + ", ".join(f"{str(d).removeprefix('torch.')} {p:.1f}" for d, p in peaks.items())
    ]
    slow = [m.name for m in modes if peaks[m.compute_dtype] < peaks[torch.float32]]
    if slow:
        modes = [m for m in modes if m.name not in slow]
        notes.append(f"skipped {', '.join(slow)}: bf16 is slower than fp32 on this processor (no bf16 instructions)")

    def results() -> Iterator[str | Row]:
        for preset in presets:
            preset_name, cfg = load_preset(preset)
            batch = preset_batch(preset, cfg, device)
            note, rows = bench_preset(preset_name, cfg, modes, batch, device, repeats, peaks, diffusers_names)
            yield note
            yield from rows

    return notes, results()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


# Plain-text column widths: fixed, so that rows can be printed as they are measured.
PLAIN_WIDTHS = (12, 26, 9) + tuple(max(len(c), 8) for c in COLUMNS[3:])


def table_header(markdown: bool) -> list[str]:
    """The header line(s) of a GitHub Markdown table or of plain aligned columns."""
    if markdown:
        return [table_line(list(COLUMNS), True), "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|"]
    return [table_line(list(COLUMNS), False)]


def table_line(cells: list[str], markdown: bool) -> str:
    """One table line: text columns left-aligned, numbers right-aligned."""
    if markdown:
        return "| " + " | ".join(cells) + " |"
    return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, PLAIN_WIDTHS, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = Parser(__doc__)
    add_config_flag(parser, multiple=True, default=["ddpm_cifar10", "digits"])
    add_device_flag(parser)
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed calls per measurement (median; default 5)")
    add_threads_flag(parser)
    parser.add_argument("--modes", nargs="+", type=Mode.parse, default=[Mode.parse(m) for m in DEFAULT_MODES],
                        help="rows besides fp32: fp32 or +-joined bf16, channels_last, compile, cudagraphs, "
                        "inductor_layout, e.g. "
                        "channels_last+compile (default: fp32 bf16 channels_last; compiling takes minutes on a CPU)")
    parser.add_argument("--diffusers-modes", nargs="+", type=Mode.parse, default=None, metavar="MODE",
                        help="the modes in which diffusers runs too (default: all; fp32 always)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    unknown = {m.name for m in args.diffusers_modes or []} - {m.name for m in args.modes} - {"fp32"}
    if unknown:
        raise UserError(f"--diffusers-modes: {', '.join(sorted(unknown))} not among --modes")
    device = resolve_device(args.device, "--device")
    kept = set_up_allocator(args, device)
    torch.backends.cudnn.benchmark = True  # fixed shapes, as in the trainer
    set_threads(args.threads)
    notes, results = run_benchmark(args.config, args.modes, device, args.repeats, args.diffusers_modes)
    notes.append(f"host allocator: {'freed memory kept' if kept else 'as the platform sets it'}")
    print("\n".join(notes), flush=True)
    for item in results:  # a preset's note, then its rows as they are measured
        if isinstance(item, str):
            print("", item, "", *table_header(args.markdown), sep="\n", flush=True)
        else:
            print(table_line(item.cells(), args.markdown), flush=True)


if __name__ == "__main__":
    run_cli(main)
