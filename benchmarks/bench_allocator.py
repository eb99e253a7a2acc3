"""What keeping freed host memory (``diffusion.device.tune_host_allocator``) saves on a CPU.

The allocator setting is process-wide, so every measurement runs in a fresh process: a training
step (forward, loss, backward, AdamW) or a sampling network call of our U-Net in fp32, once with
glibc's allocator as it is and once with freed memory kept, alternating the two settings round
by round so that background load hits both alike. Each process reports the median over its
calls of the wall time, the system time (the kernel's share: page faults, zeroing new pages)
and the page faults; the table gives the median over the rounds.

    python benchmarks/bench_allocator.py [--config digits] [--threads 1] [--rounds 3] [--calls 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench_models import (
    Mode,
    fixed_batch,
    load_preset,
    make_steps,
    preset_batch,
)
from diffusion.cli import Parser, add_config_flag, add_threads_flag, positive_int, set_threads
from diffusion.device import tune_host_allocator
from diffusion.errors import UserError, run_cli
from diffusion.schedule import NoiseSchedule
from models import build_model

SETTINGS = ("default", "kept")
KINDS = ("train", "sample")


def measure(preset: str, kind: str, calls: int) -> dict[str, float]:
    """Median wall and system milliseconds and page faults of ``calls`` calls after two warm-ups."""
    name, cfg = load_preset(preset)
    device = torch.device("cpu")
    x0, noise, t = fixed_batch(cfg, preset_batch(name, cfg, device), device)
    train_step, sample_call = make_steps(
        build_model(cfg), Mode.parse("fp32"), device, NoiseSchedule.from_config(cfg.diffusion), x0, noise, t
    )
    fn = train_step if kind == "train" else sample_call
    fn(), fn()
    samples: dict[str, list[float]] = {"ms": [], "sys ms": [], "faults": []}
    for _ in range(calls):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        samples["ms"].append(1e3 * wall)
        samples["sys ms"].append(1e3 * (after.ru_stime - before.ru_stime))
        samples["faults"].append(after.ru_minflt - before.ru_minflt)
    return {key: statistics.median(values) for key, values in samples.items()}


def run_worker(setting: str, preset: str, kind: str, threads: int, calls: int) -> dict[str, float]:
    """One measurement in a fresh process."""
    cmd = [sys.executable, __file__, "--worker", setting, kind, "--config", preset,
           "--threads", str(threads), "--calls", str(calls)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"the {setting} {kind} measurement of {preset} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = Parser(__doc__)
    add_config_flag(parser, multiple=True, default=["digits"])
    add_threads_flag(parser)
    parser.add_argument("--rounds", type=positive_int, default=3, help="processes per setting and measurement (default 3)")
    parser.add_argument("--calls", type=positive_int, default=5, help="timed calls per process (default 5)")
    parser.add_argument("--worker", nargs=2, metavar=("SETTING", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # inside one measurement's process
        setting, kind = args.worker
        if setting == "kept" and not tune_host_allocator(torch.device("cpu")):
            raise UserError("keeping freed memory needs glibc (Linux); nothing to compare on this platform")
        set_threads(args.threads)
        print(json.dumps(measure(args.config[0], kind, args.calls)))
        return
    set_threads(args.threads)
    print(f"{torch.get_num_threads()} thread(s), {args.rounds} round(s) of {args.calls} call(s); medians")
    print("| preset | measurement | allocator | ms | system ms | page faults |")
    print("|---|---|---|---:|---:|---:|")
    for preset in args.config:
        for kind in KINDS:
            rounds = [{s: run_worker(s, preset, kind, torch.get_num_threads(), args.calls) for s in SETTINGS}
                      for _ in range(args.rounds)]
            for setting in SETTINGS:
                med = {key: statistics.median(r[setting][key] for r in rounds) for key in rounds[0][setting]}
                label = "freed memory kept" if setting == "kept" else "glibc default"
                print(f"| {Path(preset).stem} | {kind} | {label} | {med['ms']:.0f} | {med['sys ms']:.1f} | {med['faults']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    run_cli(main)
