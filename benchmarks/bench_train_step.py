"""Training step time of variants of one config: what trading width, depth or batch size for
steps at a fixed training time allows (docs/results.md#width-and-attention-at-fixed-training-time).

Each variant is the config plus ``section.key=value`` overrides split as a shell would ('' for none),
built as a whole :class:`~diffusion.trainer.Trainer` (data loader, loss, backward, AdamW, EMA:
everything a step of ``train.py`` does) in this process, without starting a run. Rounds
alternate the variants so that background load hits all alike; each round times ``--steps``
steps after five warm-up steps. The table gives the median milliseconds per step, its speed
against the first variant, and the steps that take the first variant's ``train.steps`` time.

    python benchmarks/bench_train_step.py [--config digits] [--threads 2] [--rounds 5] [--steps 20]
        --variants "" "model.base_channels=16" "model.base_channels=16 model.attention_resolutions=[]"
"""

from __future__ import annotations

import shlex
import statistics
import tempfile
import time

from diffusion.cli import (
    Parser,
    add_config_flag,
    add_threads_flag,
    config_path,
    positive_int,
    set_threads,
)
from diffusion.config import load_config
from diffusion.errors import run_cli
from diffusion.trainer import Trainer

WARMUP_STEPS = 5


def step_times(config: str, variants: list[str], rounds: int, steps: int, root: str) -> list[list[float]]:
    """Milliseconds per step of each variant, one entry per round."""
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as logs:
        trainers = [
            Trainer(load_config(config, [*shlex.split(variant), f"log.root={logs}", f"log.run_name=variant{i}", f"data.root={root}"]))
            for i, variant in enumerate(variants)
        ]
        times: list[list[float]] = [[] for _ in variants]
        try:
            for _ in range(rounds):
                for trainer, measured in zip(trainers, times, strict=True):
                    for _ in range(WARMUP_STEPS):
                        trainer.train_step()
                    start = time.perf_counter()
                    for _ in range(steps):
                        trainer.train_step()
                    float(trainer.interval_loss)  # wait for the device
                    measured.append(1e3 * (time.perf_counter() - start) / steps)
        finally:
            for trainer in trainers:
                trainer.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    add_config_flag(parser, default="digits")
    parser.add_argument("--variants", nargs="+", required=True, help="override lists, one per variant ('' for the config as it is)")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per variant and round")
    parser.add_argument("--root", default="Data", help="data root (datasets and caches)")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    config = config_path(args.config)
    times = step_times(str(config), args.variants, args.rounds, args.steps, args.root)
    first = statistics.median(times[0])
    first_steps = load_config(config, shlex.split(args.variants[0])).train.steps
    print(f"{config.name}, {args.rounds} rounds of {args.steps} steps")
    print("| variant | ms/step | rounds | x first | steps in the first's time |")
    print("| --- | --- | --- | --- | --- |")
    for variant, measured in zip(args.variants, times, strict=True):
        median = statistics.median(measured)
        print(f"| {variant or '(as configured)'} | {median:.1f} | {' '.join(f'{m:.0f}' for m in measured)} |"
              f" {first / median:.2f} | {first_steps * first / median:.0f} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
