"""Sample from a trained DDPM: a grid, optionally every image, and an animation of the denoising.

    python inference.py --checkpoint Models/<run>            # the run's checkpoints/last.pt
    python inference.py --checkpoint Models/<run>/checkpoints/step_0100000.pt --sampler ddim --steps 50
    python inference.py --checkpoint Models/<run> --num-samples 10000 --sampler dpm++ --steps 20 --fid
    python inference.py --checkpoint Models/<digits run> --classes 3,7 --guidance-scale 2
    python inference.py --checkpoint Models/<celeba run> --attributes Smiling=1,Eyeglasses=0
    python inference.py --checkpoint google/ddpm-celebahq-256 --sampler dpm++ --steps 25 --num-samples 4

Defaults come from the checkpoint's ``sample:`` config section; flags override them. Files go to
``Models/<run>/samples/<timestamp>/`` (imported weights: ``Models/<name>/samples/...``) unless
``--out`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch

from diffusion.cli import (
    Parser,
    add_device_flag,
    add_ema_length_flag,
    add_guidance_flag,
    add_threads_flag,
    check_ema_flags,
    check_guidance_flag,
    positive_int,
    set_threads,
)
from diffusion.conditioning import data_conditions, sampling_conditions
from diffusion.config import DATA_SOURCES
from diffusion.device import PRECISIONS, resolve_device, tune_host_allocator
from diffusion.errors import UserError, run_cli
from diffusion.generate import (
    VIDEO_FORMATS,
    default_out_dir,
    load_model,
    write_record,
    write_samples,
)
from diffusion.samplers import SAMPLERS


def check_memory(num_samples: int, model: torch.nn.Module) -> None:
    """--fid holds every sample (uint8) in memory: refuse a count that cannot fit, before sampling."""
    needed = num_samples * model.in_channels * model.image_size**2
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on every system
        return
    if needed > available:
        raise UserError(
            f"--fid with --num-samples {num_samples} holds {needed / 1e9:.1f} GB of samples in memory,"
            f" {available / 1e9:.1f} GB is available; use fewer samples"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, a run folder (its checkpoints/last.pt), a diffusers folder,"
                   " or a Hugging Face Hub id such as google/ddpm-cifar10-32[@revision]")
    p.add_argument("--num-samples", type=positive_int, help="images to generate (default: sample.num_samples)")
    p.add_argument("--batch-size", type=positive_int, help="images per network call (default: sample.batch_size)")
    p.add_argument("--sampler", choices=SAMPLERS, help="reverse process (default: sample.sampler)")
    p.add_argument("--steps", type=positive_int, help="network evaluations, at most T (default: sample.steps)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1] (default: sample.eta)")
    p.add_argument("--seed", type=int, help="seed; sample i always gets noise stream (seed, i) (default: sample.seed)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add_ema_length_flag(p)
    add_device_flag(p)
    add_threads_flag(p)
    p.add_argument("--precision", choices=PRECISIONS, help="autocast precision (default: train.precision)")
    p.add_argument(
        "--compile", action="store_true",
        help="torch.compile the network first: a minute or two of compilation, then faster steps"
        " (on CUDA replayed as CUDA graphs); worth it for long runs such as --fid",
    )
    p.add_argument("--out", type=Path, help="output folder (default: <run>/samples/<timestamp>/)")
    p.add_argument("--no-grid", action="store_true", help="do not write grid.png (it shows at most the first 256 or so samples)")
    p.add_argument("--save-images", action="store_true", help="write every sample to images/000000.png, ...")
    p.add_argument("--video", choices=VIDEO_FORMATS, default="mp4", help="denoising animation format (default: mp4)")
    p.add_argument("--frames", type=positive_int, help="frames of the animation (default: sample.frames)")
    p.add_argument("--fps", type=positive_int, help="frames per second of the animation (default: sample.fps)")
    p.add_argument(
        "--classes", metavar="LIST",
        help="class model: 'all', or comma-separated indices or names (3 | 0,1,2 | cat,dog); one grid row per class"
        " (default: all)",
    )
    p.add_argument(
        "--attributes", metavar="NAME=0|1,...",
        help="attribute model: e.g. Smiling=1,Eyeglasses=0; attributes not listed are left unconditioned",
    )
    add_guidance_flag(p)
    p.add_argument(
        "--fid", action="store_true",
        help="also compute FID and KID of the samples against the training data; needs the 'fid' extra;"
        " use >= 10000 samples for unbiased numbers; a conditional model without --classes/--attributes"
        " samples labels in the training data's proportions",
    )
    p.add_argument(
        "--fid-data", choices=DATA_SOURCES,
        help="the training set --fid compares against, under data.root (default: the checkpoint's data.source;"
        " imported weights need it, e.g. cifar10 for google/ddpm-cifar10-32)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device, "--device")
    tune_host_allocator(device)
    check_ema_flags(args.no_ema, args.ema_length)
    loaded = load_model(args.checkpoint, use_ema=not args.no_ema, ema_length=args.ema_length, device=device)
    overrides = {
        "num_samples": args.num_samples, "batch_size": args.batch_size, "sampler": args.sampler,
        "steps": args.steps, "eta": args.eta, "seed": args.seed, "frames": args.frames, "fps": args.fps,
        "guidance_scale": args.guidance_scale,
    }
    options = dataclasses.replace(loaded.config.sample, **{k: v for k, v in overrides.items() if v is not None})
    check_guidance_flag(args.guidance_scale, loaded.config.conditional)
    if args.fid and loaded.config.conditional and args.classes is None and args.attributes is None:
        conditions = data_conditions(loaded.config, options.num_samples, options.seed)
    else:
        conditions = sampling_conditions(loaded.config, options.num_samples, args.classes, args.attributes)
    if args.fid:  # before sampling: too few samples, a missing 'fid' extra or Inception weights stop here
        if options.num_samples < 2:
            raise UserError(f"--fid needs at least 2 samples, got --num-samples {options.num_samples}")
        if loaded.name and args.fid_data is None:
            raise UserError(f"--fid: {loaded.source} does not say which data it was trained on; add --fid-data, e.g. cifar10")
        check_memory(options.num_samples, loaded.model)
        from diffusion.fid import fid_of_samples, inception_extractor

        extractor = inception_extractor(device)
    out_dir = args.out if args.out is not None else default_out_dir(loaded)
    if loaded.name:
        print(f"weights {loaded.source} (converted: {loaded.path})")
    else:
        print(f"checkpoint {loaded.path} (step {loaded.step}, {loaded.weights} weights)")
    print(
        f"sampling {options.num_samples} images: {options.sampler}, {options.steps} steps, seed {options.seed}, "
        f"{f'guidance scale {options.guidance_scale:g}, ' if conditions is not None else ''}on {device}",
        flush=True,
    )
    images, record = write_samples(
        loaded, options, out_dir,
        precision=args.precision or loaded.config.train.precision,
        grid=not args.no_grid, save_images=args.save_images, video=args.video, progress=True,
        compile=args.compile, keep=args.fid, conditions=conditions,
    )
    print(f"sampled in {record['sampling_seconds']:.1f} s ({record['precision']}); wrote {out_dir}/")
    for name in [*record["files"], "samples.json"]:
        count = f" ({options.num_samples} PNG files)" if name == "images" else ""
        print(f"  {out_dir / name}{count}")
    if args.fid:
        data = dataclasses.replace(loaded.config.data, source=args.fid_data or loaded.config.data.source)
        result = fid_of_samples(images, data, device, extractor=extractor)
        record.update(fid=result.fid, kid_mean=result.kid_mean, kid_std=result.kid_std,
                      fid_reference_images=result.num_reference)
        write_record(record, out_dir)
        print(result.summary(options.sampler, options.steps))
    return 0


if __name__ == "__main__":
    run_cli(main)
