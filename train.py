"""Train a DDPM with the data, model and recipe of a config file.

  python train.py --config Configs/config.yaml [--resume [PATH]] [--threads N] [section.key=value ...]
  python train.py --config digits ...                 (a preset name under Configs/ works too)
  torchrun --nproc_per_node=N train.py --config ...   (DDP: train.batch_size is per process)

A new run writes to <log.root>/<log.run_name>/ and refuses a folder that already exists, so
nothing is overwritten: continue that run with --resume, or choose another log.run_name (a run
folder without any checkpoint, left by a failed start, is reused). A checkpoint outside a run
folder is continued in a new run folder.
Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and prints the exact command
that resumes the run (a second one aborts at once). Exit codes: 0 finished or stopped, 1 the
loss became non-finite, 2 bad input (config, data, checkpoint), 130 aborted (a second Ctrl-C,
or one before training started).
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffusion.cli import Parser, add_config_flag, add_threads_flag, config_path, set_threads
from diffusion.config import load_config
from diffusion.errors import run_cli
from diffusion.trainer import NonFiniteLossError, train


def main(argv: list[str] | None = None) -> int:
    parser = Parser(__doc__)
    add_config_flag(parser, required=True)
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="PATH",
        help="continue a run: from PATH (a checkpoint, or a run folder's checkpoints/last.pt), or without PATH"
        " the run named by log.run_name, else the newest <log.root>/<config name>-* run",
    )
    add_threads_flag(parser)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.lr=1e-4")
    args = parser.parse_intermixed_args(argv)
    resume, overrides = args.resume, list(args.overrides)
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():  # `--resume key=value`
        resume, overrides = True, [resume, *overrides]
    cfg = load_config(config_path(args.config), overrides)
    set_threads(args.threads)
    try:
        train(cfg, resume)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one while e.g. the data cache was built
        print("aborted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_cli(main)
