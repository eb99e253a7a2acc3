"""Classifier-free guidance on a class-conditional digits model: fidelity against diversity.

For each guidance scale S, samples N images, N/10 asked for each digit, with the checkpoint's
sampler, and measures with the digit classifier of ``digits_quality.py``:

* class accuracy: the share of samples asked for digit k that the classifier labels k;
* FID in the classifier's feature space, against the whole training set (as ``digits_quality.py``);
* class coverage: coverage of Naeem et al. 2020 (eq. 4, k = 5) per digit, averaged: the share of a
  digit's training images whose k-nearest-neighbour ball (classifier features, among that digit's
  training images) holds at least one sample asked for that digit. It falls as samples crowd
  into a few modes.

``--baseline`` adds a row for an unconditional digits model sampled with the same seed; its
samples are grouped for coverage by the class the classifier gives them.

    python benchmarks/digits_guidance.py --checkpoint Models/<run> [--baseline Models/<unconditional run>]
                                         [--scales 0 1 2 3 5] [--num-samples 500] [--threads N]
"""

from __future__ import annotations

import dataclasses
import time

import torch

from benchmarks.digits_quality import (
    ClassifierFeatures,
    DigitClassifier,
    digits_data,
    trained_classifier,
)
from diffusion.cli import Parser, add_threads_flag, positive_int, set_threads
from diffusion.conditioning import class_rows
from diffusion.errors import UserError, run_cli
from diffusion.fid import compare_image_sets
from diffusion.generate import load_model
from diffusion.media import to_uint8
from diffusion.samplers import generate_from

NEIGHBOURS = 5  # k of the coverage metric (Naeem et al.'s default)


def coverage(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Naeem et al. 2020 eq. 4: the share of real features whose distance to their k-th nearest
    real neighbour is at least the distance to the nearest fake feature."""
    radius = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # the first is the point itself
    nearest_fake = torch.cdist(real, fake).min(dim=1).values
    return (nearest_fake <= radius).float().mean().item()


@torch.no_grad()
def guidance_metrics(
    classifier: DigitClassifier, samples: torch.Tensor, asked: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor
) -> dict[str, float]:
    """Class accuracy, classifier FID and mean per-class coverage of ``samples`` asked for ``asked``."""
    as_uint8 = lambda x: to_uint8(x).permute(0, 2, 3, 1).numpy()  # noqa: E731
    fid = compare_image_sets(as_uint8(real), as_uint8(samples), ClassifierFeatures(classifier), kid=False).fid
    accuracy = (classifier(samples).argmax(1) == asked).float().mean().item()
    real_features, fake_features = classifier.features(real), classifier.features(samples)
    per_class = [
        coverage(real_features[real_labels == c], fake_features[asked == c]) for c in asked.unique().tolist()
    ]
    return {"accuracy": accuracy, "fid": fid, "coverage": sum(per_class) / len(per_class)}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file or run folder of a class-conditional digits model")
    parser.add_argument("--baseline", help="checkpoint or run folder of an unconditional digits model to compare with")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 3, 5], help="guidance scales S")
    parser.add_argument("--num-samples", type=positive_int, default=500, help="samples per scale, an equal share per digit")
    parser.add_argument("--seed", type=int, default=1, help="seed of the samples (the same noise at every scale)")
    parser.add_argument("--root", default="Data", help="data root: the digits cache and the classifier live under it")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    loaded = load_model(args.checkpoint)
    cfg = loaded.config
    if cfg.data.source != "digits" or cfg.model.num_classes != 10:
        raise UserError(f"{loaded.path}: not a class-conditional digits model (data.source {cfg.data.source!r},"
                        f" model.num_classes {cfg.model.num_classes})")
    conditions = class_rows(list(range(10)), cfg.data.class_names, args.num_samples)
    classifier = trained_classifier(args.root)
    real, real_labels = digits_data(args.root)
    print(f"checkpoint {loaded.path} at step {loaded.step}; {args.num_samples} samples per scale,"
          f" {cfg.sample.sampler} {cfg.sample.steps} steps, seed {args.seed}")
    print("| guidance scale | class accuracy % | FID (classifier) | class coverage % | seconds |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    if args.baseline:
        base = load_model(args.baseline)
        if base.config.data.source != "digits" or base.config.conditional:
            raise UserError(f"--baseline {base.path}: not an unconditional digits model")
        options = dataclasses.replace(base.config.sample, num_samples=args.num_samples, seed=args.seed, batch_size=250)
        start = time.perf_counter()
        samples = generate_from(base.model, base.schedule, options)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            predicted = classifier(samples).argmax(1)
        m = guidance_metrics(classifier, samples, predicted, real, real_labels)
        print(f"| unconditional model | - | {m['fid']:.2f} | {100 * m['coverage']:.1f} | {seconds:.0f} |", flush=True)
    for scale in args.scales:
        options = dataclasses.replace(
            cfg.sample, num_samples=args.num_samples, seed=args.seed, batch_size=250, guidance_scale=scale
        )
        start = time.perf_counter()
        samples = generate_from(loaded.model, loaded.schedule, options, labels=conditions.labels)
        seconds = time.perf_counter() - start
        m = guidance_metrics(classifier, samples, conditions.labels, real, real_labels)
        print(f"| {scale:g} | {100 * m['accuracy']:.1f} | {m['fid']:.2f} | {100 * m['coverage']:.1f} | {seconds:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
