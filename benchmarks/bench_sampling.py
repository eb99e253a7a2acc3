"""Wall time to sample a batch of images with DDPM-1000, DDIM-50 and DPM-Solver++(2M)-20.

The network is freshly initialised: a step costs the same whatever the weights. With
``--max-steps K`` only the first K steps of each sampler run and the total is extrapolated
(every step makes one network call of the same cost), which makes the 64x64 model measurable
on a CPU.

With ``--guidance-scale S`` the networks are class-conditional (10 classes) and every row is
timed twice: unguided (S = 1, one network call per step) and guided by S (classifier-free
guidance: the conditional and unconditional halves in one call on a doubled batch).

    python benchmarks/bench_sampling.py [--preset digits config] [--device cpu] [--threads 1]
                                        [--num-samples 64] [--max-steps 5] [--channels-last]
                                        [--precision auto] [--guidance-scale 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_models import (  # noqa: E402
    add_allocator_flag,
    add_threads_flag,
    load_preset,
    set_threads,
    set_up_allocator,
    synchronize,
)
from diffusion.device import PRECISIONS, autocast_dtype, precision_name, resolve_device  # noqa: E402
from diffusion.errors import UserError, run_cli  # noqa: E402
from diffusion.samplers import NoiseStreams, reverse_process  # noqa: E402
from diffusion.schedule import NoiseSchedule  # noqa: E402
from models import UNet  # noqa: E402

SAMPLERS = (("ddpm", 1000), ("ddim", 50), ("dpm++", 20))


def sampling_seconds(
    model: torch.nn.Module, schedule: NoiseSchedule, sampler: str, steps: int, num_samples: int,
    device: torch.device, max_steps: int | None, dtype: torch.dtype | None = None, guidance_scale: float = 1.0,
) -> tuple[float, int]:
    """Seconds for the whole reverse process under autocast ``dtype`` (extrapolated from
    ``max_steps`` steps when given) and the number of steps actually run. A conditional model
    samples labels 0, 1, 2, ... guided by ``guidance_scale``."""
    shape = (model.in_channels, model.image_size, model.image_size)
    noise = NoiseStreams(0, range(num_samples), shape, device)
    labels = torch.arange(num_samples, device=device) % model.num_classes if model.num_classes else None
    process = reverse_process(
        model, schedule, noise, sampler=sampler, steps=steps, autocast_dtype=dtype, labels=labels,
        guidance_scale=guidance_scale,
    )
    run = steps if max_steps is None else min(steps, max_steps)
    synchronize(device)
    start = time.perf_counter()
    for _ in itertools.islice(process, run):
        pass
    synchronize(device)
    return (time.perf_counter() - start) * steps / run, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["digits", "config"],
                        help="preset names under Configs/ or YAML paths (default: digits config)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    add_threads_flag(parser)
    parser.add_argument("--num-samples", type=int, default=64, help="images sampled in one batch (default 64)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="run at most this many steps per sampler and extrapolate (default: all)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision, as inference.py --precision (default auto: bf16 on CUDA, else fp32)")
    parser.add_argument("--guidance-scale", type=float,
                        help="time class-conditional networks, unguided and guided by this scale (default: unconditional)")
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    if args.num_samples < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise UserError("--num-samples and --max-steps must be at least 1")
    device = resolve_device(args.device, "--device")
    dtype = autocast_dtype(args.precision, device, "--precision")
    kept = set_up_allocator(args, device)
    set_threads(args)
    print(f"{args.num_samples} images, {args.device}, {precision_name(dtype)}, {torch.get_num_threads()} thread(s)"
          f"{', channels-last' if args.channels_last else ''}{', freed host memory kept' if kept else ''}")
    guided = args.guidance_scale is not None
    scales = [1.0, args.guidance_scale] if guided else [1.0]
    print("| preset | sampler | steps | guidance scale | seconds | ms per step |" if guided else
          "| preset | sampler | steps | seconds | ms per step |")
    print("|---|---|---:|---:|---:|---:|" if guided else "|---|---|---:|---:|---:|")
    for preset in args.preset:
        name, cfg = load_preset(preset)
        model = UNet(**{**vars(cfg.model), "num_classes": 10 if guided else 0}).to(device).eval()
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        schedule = NoiseSchedule.from_config(cfg.diffusion).to(device)
        sampling_seconds(model, schedule, "ddim", 2, args.num_samples, device, None, dtype)  # warm-up
        for (sampler, steps), scale in itertools.product(SAMPLERS, scales):
            total, run = sampling_seconds(
                model, schedule, sampler, steps, args.num_samples, device, args.max_steps, dtype, scale
            )
            seconds = f"{total:.1f}" + (f" (from {run} steps)" if run < steps else "")
            shown = f" {scale:g} |" if guided else ""
            print(f"| {name} | {sampler} | {steps} |{shown} {seconds} | {1e3 * total / steps:.1f} |", flush=True)


if __name__ == "__main__":
    run_cli(main)
