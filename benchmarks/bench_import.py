"""Importing diffusers pipelines at the released models' full layouts: exactness and speed.

For each layout (``google/ddpm-cifar10-32``: 35.7M parameters; the 256-pixel ``google/ddpm-*-256``
models: 113.7M) a diffusers ``UNet2DModel`` with random non-zero weights is saved by
``DDPMPipeline.save_pretrained`` and loaded through ``load_model``. Printed per layout: the largest
output difference from diffusers on the same input, the first (converting) load, the cached load,
and the load of the converted file as a plain checkpoint. Then the imported CIFAR-10-layout model
and the same network built as our checkpoints build it (symmetric padding) are timed on network calls
(the cost of a sampler step), alternating call by call, in one process. Needs diffusers (the 'bench' extra).

    python benchmarks/bench_import.py [--layouts cifar10 256px] [--threads 1] [--repeats 3] [--calls 20] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_models import interleaved_medians
from diffusion.cli import Parser, add_threads_flag, positive_int, set_threads
from diffusion.config import ModelConfig
from diffusion.errors import UserError, run_cli
from diffusion.generate import load_model
from models import Downsample, build_model

# The released configs' keys, from the Hub (the 2022 uploads; "attention_head_dim": null is one head).
PAPER = {"act_fn": "silu", "attention_head_dim": None, "center_input_sample": False, "downsample_padding": 0,
         "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
         "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "time_embedding_type": "positional"}
LAYOUTS = {
    # google/ddpm-cifar10-32: attention at 16 px.
    "cifar10": {**PAPER, "sample_size": 32, "block_out_channels": [128, 256, 256, 256],
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
    # google/ddpm-{celebahq,church,bedroom,cat}-256 and their ddpm-ema- variants: attention at 16 px (level 4).
    "256px": {**PAPER, "sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512],
              "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4},
}
CPU = torch.device("cpu")


def random_unet(config: dict) -> torch.nn.Module:
    """A diffusers ``UNet2DModel`` whose every parameter is random and non-zero (norm scales near 1),
    so that no zero-initialised layer can hide a wrong mapping."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return unet


def random_pipeline(layout: str, folder: Path) -> torch.nn.Module:
    """Save a DDPMPipeline of ``layout`` with random non-zero weights; return its UNet."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = random_unet(LAYOUTS[layout])
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="fixed_large")).save_pretrained(folder)
    return unet


def downsample_seconds(m: ModelConfig, batch: int, calls: int) -> dict[str, float]:
    """Median seconds of a network's downsampling convolutions at their input shapes, summed, with
    TensorFlow 'SAME' and with symmetric padding (the same weights), alternating."""
    total = {"tf_same": 0.0, "symmetric": 0.0}
    for level, mult in enumerate(m.channel_mult[:-1]):
        ch, size = m.base_channels * mult, m.image_size // 2**level
        x = torch.randn(batch, ch, size, size).to(memory_format=torch.channels_last)
        layers = {padding: Downsample(ch, padding).to(memory_format=torch.channels_last) for padding in total}
        layers["symmetric"].load_state_dict(layers["tf_same"].state_dict())
        medians = interleaved_medians({p: lambda layer=layer, x=x: layer(x, None) for p, layer in layers.items()}, calls, CPU)
        for padding, value in medians.items():
            total[padding] += value
    return total


def main(argv: list[str] | None = None) -> None:
    parser = Parser(__doc__)
    parser.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--repeats", type=positive_int, default=3, help="alternating timed loads of each kind")
    parser.add_argument("--calls", type=positive_int, default=20, help="alternating timed network calls of each model")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per network call (default: 8)")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        raise UserError(f"the benchmark needs diffusers ({err}); install it with pip install '.[bench]'") from None
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))  # the pipelines and the conversion cache
    os.environ["DDPM_CACHE"] = str(work / "cache")
    try:
        report(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path) -> None:
    """Print the tables, with the pipelines and conversions under ``work``."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"loads: the first, then the median of {args.repeats} alternating loads of each kind")
    print("| layout | parameters | max abs output difference | first load (conversion) | cached load | checkpoint load |")
    print("| --- | --- | --- | --- | --- | --- |")
    imported = {}
    for layout in args.layouts:
        theirs = random_pipeline(layout, work / layout)
        start = time.perf_counter()
        loaded = load_model(work / layout)
        first = time.perf_counter() - start
        loads = interleaved_medians(
            {"cached": lambda layout=layout: load_model(work / layout),  # the folder: its cached conversion
             "native": lambda loaded=loaded: load_model(loaded.path)},  # the converted file itself
            args.repeats, CPU,
        )
        size = LAYOUTS[layout]["sample_size"]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            diff = max((loaded.model(x, torch.tensor([t])) - theirs(x, torch.tensor([t])).sample).abs().max().item()
                       for t in (0, 500, 999))
        n = sum(p.numel() for p in loaded.model.parameters())
        print(f"| {layout} | {n / 1e6:.1f}M | {diff:.2e} | {first:.2f} s | {loads['cached']:.2f} s | {loads['native']:.2f} s |",
              flush=True)
        imported[layout] = loaded
        del theirs
    if "cifar10" in imported:
        ours = imported["cifar10"]
        # The same network as our own checkpoints build it (Configs/ddpm_cifar10.yaml), symmetric padding.
        cfg = dataclasses.replace(ours.config, model=dataclasses.replace(ours.config.model, downsample_padding="symmetric"))
        native = build_model(cfg).eval().to(memory_format=torch.channels_last)  # as load_model does on a CPU
        native.load_state_dict(ours.model.state_dict())
        size = ours.config.model.image_size
        x = torch.randn(args.batch_size, 3, size, size).to(memory_format=torch.channels_last)
        t = torch.full((args.batch_size,), 500)
        models = {"imported (tf_same padding)": ours.model, "native (symmetric padding)": native}
        with torch.inference_mode():
            calls = interleaved_medians({name: lambda m=m: m(x, t) for name, m in models.items()}, args.calls, CPU)
            layers = downsample_seconds(ours.config.model, args.batch_size, args.calls)
        print(f"\nCIFAR-10 layout: median seconds per network call on {args.batch_size} images, {args.calls} alternating calls each;"
              " and of its downsampling convolutions alone, summed")
        print("| model | seconds per call | of which downsampling |")
        print("| --- | --- | --- |")
        for (name, value), layer in zip(calls.items(), layers.values(), strict=True):
            print(f"| {name} | {value:.3f} | {layer:.4f} |")


if __name__ == "__main__":
    run_cli(main)
