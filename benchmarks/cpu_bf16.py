"""Does bf16 autocast train and sample the digits demo as well as fp32 on a CPU?

For each seed the digits preset is trained for ``--steps`` steps in fp32 and in bf16 autocast
(``train.precision: bf16``; ``auto`` stays fp32 on CPUs because of what this script measured).
The script prints the logged training loss (each log interval's mean) of both precisions, fp32's
spread over the seeds (the noise the bf16 curve is judged against), and the sample quality of
every run as ``benchmarks/digits_quality.py`` measures it (FID of ``--num-samples`` samples with
the preset's own sampler in a digit classifier's feature space), sampled in the run's own
precision and, with ``--cross-sample``, also in the other one: that tells a quality difference
made by training from one made by sampling.

On a CPU without bf16 instructions oneDNN runs bf16 through fallback kernels more than ten
times slower than fp32 (docs/results.md#bf16-on-cpus), so ``--kernels auto`` emulates them there: every
matrix product and convolution that autocast hands to bf16 is computed in fp32 from the same
bf16-rounded inputs and its output rounded to bf16, which is bf16 arithmetic with fp32
accumulation, as on bf16 hardware; everything else runs under the real autocast. Against the
fallback kernels the emulation matches convolutions forward to the last bit; their linear layers
(bias added after rounding), attention and convolution backward round once more inside, about
one bf16 ulp apart (``tests/test_benchmarks.py``).

    python benchmarks/cpu_bf16.py [--steps 500] [--seeds 0 1 2] [--num-samples 500]
                                  [--kernels auto|emulated|native] [--out Models] [--root Data]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from benchmarks.digits_quality import (
    DigitClassifier,
    digits_data,
    quality,
    real_statistics,
    sampler_options,
    trained_classifier,
)
from diffusion.cli import config_path
from diffusion.config import load_config
from diffusion.device import cpu_has_bf16
from diffusion.errors import UserError, run_cli
from diffusion.fid import ReferenceStatistics
from diffusion.generate import load_model
from diffusion.samplers import generate_from
from diffusion.trainer import train

PRECISIONS = ("fp32", "bf16")


class EmulatedBF16Kernels(TorchFunctionMode):
    """Under CPU bf16 autocast, the functions autocast runs in bf16 that this model calls run in
    fp32 on bf16-rounded inputs, with the output rounded to bf16."""

    FUNCTIONS: frozenset[Callable] = frozenset({
        F.conv2d, F.linear, F.scaled_dot_product_attention,
        torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm,
    })

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if (
            func not in self.FUNCTIONS
            or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != torch.bfloat16
        ):
            return func(*args, **kwargs)
        args, kwargs = tree_map(_round_to_bf16, (args, kwargs))
        with torch.autocast("cpu", enabled=False):
            return func(*args, **kwargs).to(torch.bfloat16)


def _round_to_bf16(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()
    return value


def bf16_kernels(precision: str, emulate: bool) -> contextlib.AbstractContextManager:
    """The emulation for a bf16 run that asks for it; nothing otherwise."""
    return EmulatedBF16Kernels() if emulate and precision == "bf16" else contextlib.nullcontext()


def logged_losses(run_dir: Path) -> dict[int, float]:
    """The run's ``train/loss`` scalars by step, read back from its TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


def train_run(precision: str, seed: int, steps: int, out: Path, emulate: bool, root: str) -> Path:
    cfg = load_config(config_path("digits"), [f"data.root={root}",
        f"train.steps={steps}", f"train.seed={seed}", f"train.precision={precision}",
        f"train.checkpoint_every={steps}", "log.sample_every=0", f"log.log_every={min(50, steps)}",
        f"log.root={out}", f"log.run_name={precision}-seed{seed}",
    ])
    with bf16_kernels(precision, emulate):
        return train(cfg)


def sample_quality(
    run_dir: Path, precision: str, num_samples: int, emulate: bool, classifier: DigitClassifier,
    reference: ReferenceStatistics,
) -> dict[str, float]:
    loaded = load_model(run_dir)
    options = sampler_options("default", loaded.config.sample, num_samples, seed=1, timesteps=loaded.schedule.timesteps)
    dtype = torch.bfloat16 if precision == "bf16" else None
    with bf16_kernels(precision, emulate):
        samples = generate_from(loaded.model, loaded.schedule, options, autocast_dtype=dtype)
    return quality(classifier, samples, reference)


def band(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (default 500)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one run per precision each")
    parser.add_argument("--num-samples", type=int, default=500, help="samples per run for its FID (default 500)")
    parser.add_argument("--kernels", choices=["auto", "emulated", "native"], default="auto",
                        help="bf16 kernels: auto emulates them on CPUs without bf16 instructions (default auto)")
    parser.add_argument("--out", type=Path, default=Path("Models"), help="parent of the run folder (default Models)")
    parser.add_argument("--root", default="Data", help="data root: the digits cache and the classifier")
    parser.add_argument("--cross-sample", action="store_true", help="also sample every run in the other precision")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.num_samples < 2:
        raise UserError("--steps must be at least 1 and --num-samples at least 2")
    emulate = args.kernels == "emulated" or (args.kernels == "auto" and not cpu_has_bf16())
    out = args.out / f"cpu-bf16-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"{'emulated' if emulate else 'native'} bf16 kernels, {torch.get_num_threads()} thread(s), runs in {out}",
          flush=True)
    runs = {(p, s): train_run(p, s, args.steps, out, emulate, args.root) for s in args.seeds for p in PRECISIONS}
    losses = {key: logged_losses(run) for key, run in runs.items()}
    print("\n| step | fp32 loss: mean [min, max] over seeds | bf16 loss: mean [min, max] |")
    print("| ---: | --- | --- |")
    for step in sorted(losses["fp32", args.seeds[0]]):
        cells = [band([losses[p, s][step] for s in args.seeds]) for p in PRECISIONS]
        print(f"| {step} | {cells[0]} | {cells[1]} |")
    classifier = trained_classifier(args.root)
    reference = real_statistics(classifier, digits_data(args.root)[0])
    print("\n| trained in | seed | sampled in | FID (classifier) | confident % | min class % |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for (precision, seed), run in runs.items():
        for sampled in [precision] + [p for p in PRECISIONS if p != precision and args.cross_sample]:
            q = sample_quality(run, sampled, args.num_samples, emulate, classifier, reference)
            print(f"| {precision} | {seed} | {sampled} | {q['fid']:.1f} | {100 * q['confident']:.1f} |"
                  f" {100 * q['min_class_share']:.1f} |", flush=True)


if __name__ == "__main__":
    run_cli(main)
