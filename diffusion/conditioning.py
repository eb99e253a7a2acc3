"""Labels for classifier-free guidance (Ho & Salimans 2022): dropping them in training, choosing
them for sampling.

A class model's labels are (N,) indices, ``num_classes`` being the null token; an attribute
model's are (N, A) values 1 (present), 0 (absent) or 2 (dropped: unconditioned). See
:class:`models.UNet`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from diffusion.config import Config
from diffusion.errors import UserError

MAX_GRID_ROWS = 8  # attribute combinations shown by a training-time sample grid


def null_value(cfg: Config) -> int:
    """The label value of the null token: index ``num_classes`` for classes, 2 for attributes."""
    return cfg.model.num_classes if cfg.model.num_classes else 2


def drop_labels(labels: torch.Tensor, prob: float, null: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ho & Salimans Algorithm 1, line 3: each entry replaced by the null token with probability
    ``prob`` (each attribute of a (B, A) label independently)."""
    if prob == 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device, generator=generator) < prob
    return labels.masked_fill(drop, null)


@dataclass(frozen=True)
class Conditions:
    """What each of N samples is conditioned on, laid out as grid rows."""

    labels: torch.Tensor  # (N,) or (N, A) int64
    row_length: int | None  # images per grid row (None: a square-ish grid)
    record: dict  # for samples.json: the classes or attributes asked for


def class_rows(classes: list[int], names: list[str], num_samples: int) -> Conditions:
    """``num_samples`` samples split into consecutive equal runs, one per class in ``classes``
    (the last run shorter when they do not divide); one grid row per class."""
    per_class = math.ceil(num_samples / len(classes))
    labels = torch.tensor(classes).repeat_interleave(per_class)[:num_samples]
    return Conditions(labels, per_class, {"classes": [names[c] for c in classes], "samples_per_class": per_class})


def parse_classes(spec: str, names: list[str]) -> list[int]:
    """``--classes``: ``all``, or comma-separated indices and/or names (``3``, ``0,1,2``, ``cat,dog``)."""
    if spec.strip() == "all":
        return list(range(len(names)))
    classes = []
    for item in (part.strip() for part in spec.split(",")):
        if item in names:
            classes.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            classes.append(int(item))
        else:
            raise UserError(
                f"--classes: unknown class '{item}'; the model has {len(names)}: indices 0-{len(names) - 1}"
                f" or names {', '.join(names)}"
            )
    return classes


def parse_attributes(spec: str, names: list[str]) -> list[int]:
    """``--attributes Smiling=1,Eyeglasses=0``: one value per attribute of the model (1 present,
    0 absent), 2 (unconditioned) for those not listed."""
    values = [2] * len(names)
    for item in (part.strip() for part in spec.split(",") if part.strip()):
        name, _, value = item.partition("=")
        if name not in names:
            raise UserError(f"--attributes: unknown attribute '{name}'; the model has {', '.join(names)}")
        if value not in ("0", "1"):
            raise UserError(f"--attributes: expected {name}=1 (present) or {name}=0 (absent), got '{item}'")
        values[names.index(name)] = int(value)
    return values


def sampling_conditions(cfg: Config, num_samples: int, classes: str | None = None, attributes: str | None = None) -> Conditions | None:
    """The labels of ``num_samples`` samples of a model trained with ``cfg``, from inference.py's
    ``--classes`` (default ``all``: every class in order, one grid row each) or ``--attributes``
    (default: every attribute unconditioned); None for an unconditional model."""
    kind = "classes" if cfg.model.num_classes else "attributes" if cfg.data.attributes else None
    for flag, value in (("classes", classes), ("attributes", attributes)):
        if value is not None and flag != kind:
            has = f"is conditioned on {kind}" if kind else "is unconditional"
            raise UserError(f"--{flag}: the model {has}; --{flag} needs a model trained on {flag}")
    if kind == "classes":
        return class_rows(parse_classes(classes or "all", cfg.data.class_names), cfg.data.class_names, num_samples)
    if kind == "attributes":
        values = parse_attributes(attributes or "", cfg.data.attributes)
        record = {name: v for name, v in zip(cfg.data.attributes, values, strict=True) if v != 2}
        return Conditions(torch.tensor([values] * num_samples), None, {"attributes": record})
    return None


def grid_conditions(cfg: Config, count: int) -> Conditions | None:
    """The labels of a training-time sample grid of about ``count`` images: full rows of
    ``count // rows`` images (at least one), one row per class, or per attribute combination (the
    first ``MAX_GRID_ROWS`` in binary order); None for an unconditional model."""
    if cfg.model.num_classes:
        rows = cfg.model.num_classes
        return class_rows(list(range(rows)), cfg.data.class_names, max(1, count // rows) * rows)
    if not cfg.data.attributes:
        return None
    combos = list(itertools.islice(itertools.product((0, 1), repeat=len(cfg.data.attributes)), MAX_GRID_ROWS))
    per_row = max(1, count // len(combos))
    labels = torch.tensor(combos).repeat_interleave(per_row, dim=0)
    return Conditions(labels, per_row, {"attributes": cfg.data.attributes})


def data_conditions(cfg: Config, num_samples: int, seed: int) -> Conditions:
    """Labels for an FID of a conditional model: :func:`data_distribution` of its training data."""
    from diffusion.data import prepare_labeled_dataset

    _, labels = prepare_labeled_dataset(cfg.data)
    return Conditions(data_distribution(labels.values, num_samples, seed), None, {"labels": "in the training data's proportions"})


def data_distribution(labels: np.ndarray, num_samples: int, seed: int, stratified: bool = True) -> torch.Tensor:
    """Labels of ``num_samples`` samples in the proportions of the training labels (N,) or (N, A),
    in seeded random order: FID compares with the data, so the samples follow its class (or
    attribute) mix.

    ``stratified``: systematic sampling of the sorted labels, one random offset and then every
    N / num_samples-th row, so each class (or attribute combination) of share p gets floor or ceil
    of p num_samples samples. Drawing them independently instead (``stratified=False``, with
    replacement) adds the draw's deviation from the data's mix to every FID, model or not: for the
    digits at 500 samples it raised a perfect model's expected FID from 18.2 to 28.3 on average
    over draws (docs/results.md#the-floor-and-the-label-draw).
    """
    rng = np.random.default_rng([seed, 17])
    if stratified:
        rows = labels.reshape(len(labels), -1)
        ordered = np.lexsort(rows.T[::-1])  # equal labels contiguous
        picks = ordered[np.floor((rng.random() + np.arange(num_samples)) * len(labels) / num_samples).astype(np.int64)]
        picks = picks[rng.permutation(num_samples)]
    else:
        picks = rng.integers(0, len(labels), num_samples)
    return torch.from_numpy(np.asarray(labels[picks], dtype=np.int64))
