"""Export a checkpoint as a diffusers ``DDPMPipeline`` folder.

    python -m diffusion.export --checkpoint Models/<run> --out ddpm-pipeline [--no-ema | --ema-length 0.1]

writes ``model_index.json``, ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``
(current diffusers parameter names) and ``scheduler/scheduler_config.json``, which
``diffusers.DDPMPipeline.from_pretrained`` loads. A config diffusers cannot express exactly is
refused with one line (:mod:`diffusion.diffusers_format`). The folder appears whole or not at all;
an existing non-empty ``--out`` is never overwritten. diffusers itself is not needed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Literal

from diffusion.atomic import write_atomic
from diffusion.cli import Parser, add_ema_length_flag, check_ema_flags
from diffusion.diffusers_format import FORMAT_VERSION, scheduler_config, to_diffusers, unet_config
from diffusion.errors import UserError, run_cli
from diffusion.generate import load_model


def export_pipeline(
    checkpoint: str | Path, out: str | Path, *, use_ema: bool = True, ema_length: float | Literal["config"] | None = "config"
) -> Path:
    """Write the ``DDPMPipeline`` folder of ``checkpoint`` (any ``load_model`` argument) to ``out``."""
    from safetensors.torch import save

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty folder; choose another --out")
    loaded = load_model(checkpoint, use_ema=use_ema, ema_length=ema_length)
    config = loaded.config
    unet = unet_config(config.model)
    scheduler = scheduler_config(config.diffusion, config.sample)
    weights = to_diffusers(loaded.model.state_dict(), config.model)
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": FORMAT_VERSION,
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    files = {
        "model_index.json": json.dumps(index, indent=2).encode() + b"\n",
        "unet/config.json": json.dumps(unet, indent=2).encode() + b"\n",
        "unet/diffusion_pytorch_model.safetensors": save(weights, metadata={"format": "pt"}),
        "scheduler/scheduler_config.json": json.dumps(scheduler, indent=2).encode() + b"\n",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # with the umask's mode, as every folder the user makes
    try:
        for name, data in files.items():
            write_atomic(tmp / name, lambda f, data=data: f.write(data), needed=len(data))
        os.replace(tmp, out)  # atomic; replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run folder (its checkpoints/last.pt), a diffusers folder or a Hub id")
    p.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (must not exist, or be empty)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA weights")
    add_ema_length_flag(p)
    args = p.parse_args(argv)
    check_ema_flags(args.no_ema, args.ema_length)
    out = export_pipeline(args.checkpoint, args.out, use_ema=not args.no_ema, ema_length=args.ema_length)
    print(f"wrote the DDPMPipeline folder {out}/ (load it with diffusers.DDPMPipeline.from_pretrained)")
    return 0


if __name__ == "__main__":
    run_cli(main)
