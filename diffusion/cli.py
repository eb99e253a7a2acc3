"""The command-line dialect shared by ``train.py``, ``inference.py`` and the benchmarks.

Every script parses with :class:`Parser`, whose errors are one line and exit code 2 like any
other :class:`~diffusion.errors.UserError`, and takes the common flags from here, so the same
thing has the same name and the same check everywhere: ``--config`` (alias ``--preset``),
``--device``, ``--threads``, ``--ema-length`` and ``--batch-size``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import torch

from diffusion.errors import ConfigError, UserError
from diffusion.posthoc_ema import MAX_SIGMA_REL, gamma_from_sigma_rel

CONFIGS = Path(__file__).resolve().parents[1] / "Configs"  # the presets shipped with the repository
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors raise :class:`UserError` (one line, exit 2)."""

    def __init__(self, description: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=description, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def bounded_int(text: str, minimum: int, expected: str) -> int:
    """``text`` as an integer >= ``minimum``, or an argparse error saying ``expected``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return bounded_int(text, 0, "an integer >= 0")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return bounded_int(text, 1, "a positive integer")


def ema_length(text: str) -> float | Literal["config"] | None:
    """An argparse type: a relative EMA width in (0, 1/sqrt(12)], 'none' (no post-hoc EMA) or
    'config' (the checkpoint's ``sample.ema_length``)."""
    word = text.strip().lower()
    if word in ("none", "config"):
        return None if word == "none" else "config"
    try:
        value = float(text)
        gamma_from_sigma_rel(value)  # the range check of train.posthoc_ema and sample.ema_length
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"expected a relative EMA length in (0, {MAX_SIGMA_REL:.4f}] or 'none', got '{text}'"
        ) from None
    return value


def add_ema_length_flag(parser: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    """``--ema-length``: post-hoc EMA weights (:mod:`diffusion.posthoc_ema`); the default
    ``"config"`` defers to the checkpoint's ``sample.ema_length``."""
    what = "one or more relative widths" if multiple else "the relative width"
    parser.add_argument(
        "--ema-length", type=ema_length, nargs="+" if multiple else None, default=["config"] if multiple else "config",
        metavar="SIGMA_REL",
        help=f"post-hoc EMA: {what} of the EMA, e.g. 0.1, rebuilt from the run's snapshots (a run trained with"
        " train.posthoc_ema); 'none': the train.ema_decay weights; 'config' (default): the checkpoint's sample.ema_length",
    )


def check_ema_flags(no_ema: bool, ema_length: object) -> None:
    """``--no-ema`` and an explicit ``--ema-length`` (one value or a list) exclude each other."""
    if no_ema and ema_length not in ("config", ["config"]):
        raise UserError("--no-ema and --ema-length: the raw weights or an EMA of them, not both")


def config_path(name: str) -> Path:
    """A config given as a path, or as the name of a preset under ``Configs/`` (``digits``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    preset = CONFIGS / f"{name}.yaml"
    if not preset.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise UserError(f"--config: '{name}' is neither a YAML file nor a preset under Configs/ ({names})")
    return preset


def add_config_flag(parser: argparse.ArgumentParser, *, multiple: bool = False, **kwargs: Any) -> None:
    """``--config`` (alias ``--preset``): a YAML path or a preset name; several with ``multiple``."""
    what = "YAML config paths or preset names under Configs/" if multiple else "a YAML config path or a preset name under Configs/"
    default = kwargs.get("default")
    shown = f" (default: {' '.join(default) if isinstance(default, list) else default})" if default else ""
    parser.add_argument(
        "--config", "--preset", dest="config", nargs="+" if multiple else None, metavar="CONFIG",
        help=f"{what}, e.g. digits{shown}", **kwargs,
    )


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``, resolved by :func:`diffusion.device.resolve_device`."""
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads``, applied by :func:`set_threads`."""
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def add_guidance_flag(parser: argparse.ArgumentParser) -> None:
    """``--guidance-scale``, checked against the model by :func:`check_guidance_flag`."""
    parser.add_argument(
        "--guidance-scale", type=float, metavar="S",
        help="classifier-free guidance: eps_uncond + S (eps_cond - eps_uncond); 1 plain conditional,"
        " 0 unconditional (default: sample.guidance_scale)",
    )


def check_guidance_flag(scale: float | None, conditional: bool) -> None:
    """``--guidance-scale`` needs a model trained with labels."""
    if scale is not None and not conditional:
        raise UserError("--guidance-scale: the model is unconditional; guidance needs a model trained with labels")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` where given."""
    if threads is not None:
        torch.set_num_threads(threads)
