"""Wall time to sample a batch of images with DDPM-1000, DDIM-50 and DPM-Solver++(2M)-20.

The network is freshly initialised: a step costs the same whatever the weights. With
``--max-steps K`` only the first K steps of each sampler run and the total is extrapolated
(every step makes one network call of the same cost), which makes the 64x64 model measurable
on a CPU.

With ``--guidance-scale S`` the networks are class-conditional (10 classes) and every row is
timed twice: unguided (S = 1, one network call per step) and guided by S (classifier-free
guidance: the conditional and unconditional halves in one call on a doubled batch).

    python benchmarks/bench_sampling.py [--config digits config] [--device cpu] [--threads 1]
                                        [--num-samples 64] [--max-steps 5] [--channels-last]
                                        [--precision auto] [--guidance-scale 3]
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import torch

from benchmarks.bench_models import (
    add_allocator_flag,
    load_preset,
    set_up_allocator,
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
from diffusion.device import PRECISIONS, autocast_dtype, precision_name, resolve_device
from diffusion.errors import run_cli
from diffusion.samplers import NoiseStreams, reverse_process
from diffusion.schedule import NoiseSchedule
from models import build_model

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
    parser = Parser(__doc__)
    add_config_flag(parser, multiple=True, default=["digits", "config"])
    add_device_flag(parser)
    add_threads_flag(parser)
    parser.add_argument("--num-samples", type=positive_int, default=64, help="images sampled in one batch (default 64)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="run at most this many steps per sampler and extrapolate (default: all)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision, as inference.py --precision (default auto: bf16 on CUDA and on CPUs with"
                             " native bf16, else fp32)")
    parser.add_argument("--guidance-scale", type=float,
                        help="time class-conditional networks, unguided and guided by this scale (default: unconditional)")
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device, "--device")
    dtype = autocast_dtype(args.precision, device, "--precision", sampling=True)
    kept = set_up_allocator(args, device)
    set_threads(args.threads)
    print(f"{args.num_samples} images, {device}, {precision_name(dtype)}, {torch.get_num_threads()} thread(s)"
          f"{', channels-last' if args.channels_last else ''}{', freed host memory kept' if kept else ''}")
    guided = args.guidance_scale is not None
    scales = [1.0, args.guidance_scale] if guided else [1.0]
    print("| preset | sampler | steps | guidance scale | seconds | ms per step |" if guided else
          "| preset | sampler | steps | seconds | ms per step |")
    print("|---|---|---:|---:|---:|---:|" if guided else "|---|---|---:|---:|---:|")
    for preset in args.config:
        name, cfg = load_preset(preset)
        if guided:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=10))
        model = build_model(cfg).to(device).eval()
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
