"""Sample quality of a digits checkpoint: FID in the feature space of a digit classifier.

Inception features mean little for 16x16 grayscale digits, so this trains (once, cached under
Data/cache/) a small CNN classifier on the bundled digits and measures, over N samples:

* FID between the classifier's penultimate features of the samples and of the training data;
* the predicted-class histogram (all ten digits should appear, about 10% each);
* the share of samples the classifier labels with >= 90% confidence (legible digits).

A class-conditional model samples labels in the training data's class proportions
(``--labels stratified``; ``drawn``: drawn independently, as before) at the checkpoint's
``sample.guidance_scale`` or ``--guidance-scale``.

    python benchmarks/digits_quality.py --checkpoint Models/<run> [--samplers ddpm ddim:50 dpm++:20]
                                        [--num-samples 500] [--real-subsets 3] [--perfect-draws 20]
                                        [--labels stratified|drawn] [--threads N]
                                        [--no-ema | --ema-length none 0.05 0.1 0.2] [--guidance-scale S]

Two references, both scored like the samples: real vs real, averaged over ``--real-subsets K``
disjoint random sets of ``--num-samples`` training images (0: skipped), and a perfect model of
the training data: ``--perfect-draws`` sets of training images drawn i.i.d. as the samples are
(one of each sample's class), whose mean FID is what a model that reproduces its training data
exactly scores. The disjoint sets score lower than any model can expect
(docs/results.md#the-floor-and-the-label-draw); each FID's ratio to the perfect model is printed.
Without ``--checkpoint`` only the references are printed.
``--ema-length`` scores the post-hoc EMA of each listed width (a row each; 'none': the
``train.ema_decay`` weights) of a run trained with ``train.posthoc_ema``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.cli import (
    Parser,
    add_ema_length_flag,
    add_guidance_flag,
    add_threads_flag,
    check_ema_flags,
    check_guidance_flag,
    non_negative_int,
    positive_int,
    set_threads,
)
from diffusion.conditioning import data_distribution
from diffusion.config import SampleConfig, check_sampling
from diffusion.data import prepare_dataset
from diffusion.errors import UserError, run_cli
from diffusion.fid import ReferenceStatistics, compare_to_reference, compute_reference_statistics
from diffusion.generate import analytic_moments, load_model
from diffusion.media import to_uint8
from diffusion.samplers import DDPM_VARIANCES, SAMPLERS, generate_from


class DigitClassifier(nn.Module):
    """A small CNN for 16x16 digits; ``features`` is its 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits_data(root: str = "Data") -> tuple[torch.Tensor, torch.Tensor]:
    """The 16x16 training images in [-1, 1] (N, 1, 16, 16) as the model sees them, and labels."""
    from sklearn.datasets import load_digits

    from diffusion.config import DataConfig

    images = prepare_dataset(DataConfig(source="digits", root=root, image_size=16, random_flip=False))
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.from_numpy(load_digits().target)


def trained_classifier(root: str = "Data", seed: int = 0, epochs: int = 30) -> DigitClassifier:
    """Train the classifier on 90% of the digits (cached); prints its held-out accuracy.

    Its features set the FID scale, so it is trained reproducibly: everything random (initial
    weights, split, batches, shifts) comes from ``seed``, and training runs on one thread, as
    other thread counts sum in other orders and 30 epochs amplify that into another classifier
    (docs/results.md#training-recipe-for-the-digits-demo)."""
    path = Path(root) / "cache" / f"digits16_classifier_seed{seed}_epochs{epochs}.pt"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    x, y = digits_data(root)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    train, held = order[: int(0.9 * len(x))], order[int(0.9 * len(x)):]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for idx in train[torch.randperm(len(train), generator=g)].split(64):
                shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # +-1 px translations
                xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = (model(x[held]).argmax(1) == y[held]).float().mean().item()
    print(f"digit classifier: held-out accuracy {acc:.3f} ({len(held)} images)")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


class ClassifierFeatures(nn.Module):
    """The FID feature extractor: uint8 (N, 3, H, W) images -> the classifier's 128-d features."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images[:, :1].float() / 127.5 - 1)


def hwc_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] as the uint8 (N, H, W, C) arrays the FID functions take."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def real_statistics(classifier: DigitClassifier, real: torch.Tensor) -> ReferenceStatistics:
    """The FID statistics of the real images in the classifier's features: computed once, every
    sample set (and every real-vs-real or perfect-model set) is scored against them."""
    return compute_reference_statistics(hwc_uint8(real), ClassifierFeatures(classifier))


@torch.no_grad()
def quality(classifier: DigitClassifier, samples: torch.Tensor, reference: ReferenceStatistics) -> dict[str, float]:
    """FID against ``reference`` (classifier features), class-histogram balance and share of
    confident samples."""
    fid = compare_to_reference(hwc_uint8(samples), reference, ClassifierFeatures(classifier), kid=False).fid
    probs = classifier(samples).softmax(1)
    hist = torch.bincount(probs.argmax(1), minlength=10).float() / len(samples)
    return {
        "fid": fid,
        "min_class_share": hist.min().item(),
        "max_class_share": hist.max().item(),
        "confident": (probs.max(1).values >= 0.9).float().mean().item(),
    }


def sampler_options(spec: str, sample: SampleConfig, num_samples: int, seed: int, timesteps: int) -> SampleConfig:
    """``sampler[:steps[:ddpm_variance]]`` as sampling options (``ddpm:25:analytic``); ``default``
    is the checkpoint's own sampler, and every option not named comes from its ``sample`` section.
    The options pass the sampling check against the model's T (``timesteps``)."""
    name, _, rest = spec.partition(":")
    steps, _, variance = rest.partition(":")
    sampler = sample.sampler if name == "default" else name
    if sampler not in SAMPLERS or (steps and not steps.isdigit()) or (variance and variance not in DDPM_VARIANCES):
        raise UserError(f"--samplers: expected default or {', '.join(SAMPLERS)}, optionally :STEPS and"
                        f" :{'|'.join(DDPM_VARIANCES)}, got '{spec}'")
    options = dataclasses.replace(
        sample, sampler=sampler, steps=int(steps) if steps else sample.steps, num_samples=num_samples, seed=seed,
        batch_size=250, ddpm_variance=variance or sample.ddpm_variance,
    )
    check_sampling(options, timesteps, f"--samplers '{spec}'")
    return options


def perfect_model(classifier: DigitClassifier, real: torch.Tensor, reference: ReferenceStatistics, real_labels: torch.Tensor,
                  labels: torch.Tensor | None, size: int, draws: int, seed: int) -> list[float]:
    """FID of ``draws`` sets of ``size`` training images drawn i.i.d. (with replacement) as a model's
    samples are: image i of the class ``labels[i]`` (None: of any class). Their mean is the FID a
    model that samples its training data exactly can expect: the reference for a model's FID."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(real_labels, stable=True)
    counts = torch.bincount(real_labels, minlength=int(real_labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    fids = []
    for _ in range(draws):
        if labels is None:
            picks = torch.randint(len(real), (size,), generator=generator)
        else:
            picks = order[starts[labels] + (torch.rand(len(labels), generator=generator) * counts[labels]).long()]
        fids.append(quality(classifier, real[picks], reference)["fid"])
    return fids


def perfect_reference(classifier: DigitClassifier, real: torch.Tensor, reference: ReferenceStatistics,
                      real_labels: torch.Tensor, labels: torch.Tensor | None, args: argparse.Namespace) -> float:
    """Print the perfect model's FIDs for these labels (None: an unconditional model); their mean."""
    fids = perfect_model(classifier, real, reference, real_labels, labels, args.num_samples, args.perfect_draws, args.seed)
    mean = sum(fids) / len(fids)
    print(f"perfect model ({args.perfect_draws} draws of {args.num_samples} training images, i.i.d."
          f"{f', {args.labels} labels' if labels is not None else ''}): FID mean {mean:.2f}"
          f" (min {min(fids):.2f}, max {max(fids):.2f})")
    return mean


def real_floor(classifier: DigitClassifier, real: torch.Tensor, reference: ReferenceStatistics, size: int, subsets: int,
               seed: int) -> list[float]:
    """FID of ``subsets`` disjoint random sets of ``size`` real images against all of them: real vs
    real, the floor. Drawn without replacement from the reference itself, such a set varies less
    than i.i.d. samples do, so it scores below :func:`perfect_model`."""
    if subsets * size > len(real):
        raise UserError(f"--real-subsets: {subsets} disjoint sets of {size} need {subsets * size} images,"
                        f" the digits have {len(real)}")
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    return [quality(classifier, real[idx], reference)["fid"] for idx in order[: subsets * size].split(size)]


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint file or run folder (without it: only the real-data floor)")
    parser.add_argument("--samplers", nargs="+", default=["default", "ddim:50"],
                        help="sampler[:steps] list; 'default' uses the checkpoint's sample section")
    parser.add_argument("--num-samples", type=positive_int, default=500)
    parser.add_argument("--seed", type=int, default=1, help="seed of the samples, their labels and both references")
    parser.add_argument("--real-subsets", type=non_negative_int, default=1,
                        help="average real vs real over this many disjoint real subsets of --num-samples images (0: skip)")
    parser.add_argument("--perfect-draws", type=positive_int, default=20,
                        help="average the perfect model (training images drawn as the samples are) over this many draws")
    parser.add_argument("--labels", choices=("stratified", "drawn"), default="stratified",
                        help="a class model's labels: in the data's class proportions, or drawn independently from them")
    parser.add_argument("--root", default="Data", help="data root: the digits cache and the classifier live under it")
    parser.add_argument("--no-ema", action="store_true", help="score the raw weights instead of the EMA weights")
    add_ema_length_flag(parser, multiple=True)
    add_guidance_flag(parser)
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    check_ema_flags(args.no_ema, args.ema_length)

    models = [load_model(args.checkpoint, use_ema=not args.no_ema, ema_length=length) for length in args.ema_length] \
        if args.checkpoint else []
    if models:
        cfg = models[0].config
        if cfg.data.source != "digits" or cfg.model.image_size != 16 or cfg.model.in_channels != 1:
            raise UserError(f"{models[0].path}: not a 16x16 digits model (data.source {cfg.data.source!r}, "
                            f"{cfg.model.in_channels} channel(s) at {cfg.model.image_size}x{cfg.model.image_size})")
        check_guidance_flag(args.guidance_scale, cfg.conditional)
        if args.guidance_scale is not None:
            cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, guidance_scale=args.guidance_scale))
        options = [sampler_options(spec, cfg.sample, args.num_samples, args.seed, cfg.diffusion.timesteps)
                   for spec in args.samplers]
    classifier = trained_classifier(args.root)
    real, real_labels = digits_data(args.root)
    reference = real_statistics(classifier, real)
    if args.real_subsets:
        floor = real_floor(classifier, real, reference, args.num_samples, args.real_subsets, args.seed)
        print(f"real vs real ({args.real_subsets} disjoint sets of {args.num_samples} training images): FID "
              f"{' '.join(f'{f:.2f}' for f in floor)}, mean {sum(floor) / len(floor):.2f}")
    class_labels = data_distribution(real_labels.numpy(), args.num_samples, args.seed, stratified=args.labels == "stratified")
    if not models:
        for labels in (None, class_labels):
            perfect_reference(classifier, real, reference, real_labels, labels, args)
        return 0
    labels = class_labels if cfg.model.num_classes else None
    perfect = perfect_reference(classifier, real, reference, real_labels, labels, args)
    print(f"checkpoint {models[0].path} at step {models[0].step}")
    if labels is not None:
        print(f"class-conditional: labels {'in' if args.labels == 'stratified' else 'drawn from'} the training data's"
              f" class mix, guidance scale {cfg.sample.guidance_scale}")
    reference_config = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=args.root))  # the reference images
    print("| weights | sampler | steps | FID (classifier) | x perfect | min class % | max class % | confident % | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for loaded in models:
        for option in options:
            start = time.perf_counter()
            moments = analytic_moments(loaded.model, loaded.schedule, reference_config, option)
            samples = generate_from(loaded.model, loaded.schedule, option, labels=labels, eps_moments=moments)
            seconds = time.perf_counter() - start
            q = quality(classifier, samples, reference)
            sampler = f"{option.sampler} ({option.ddpm_variance})" if option.sampler == "ddpm" else option.sampler
            print(f"| {loaded.weights} | {sampler} | {option.steps} | {q['fid']:.2f} | {q['fid'] / perfect:.2f} | "
                  f"{100 * q['min_class_share']:.1f} | "
                  f"{100 * q['max_class_share']:.1f} | {100 * q['confident']:.1f} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
