"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion
models", sec. 3): choose the EMA length after training.

Training with ``train.posthoc_ema: [0.05, 0.10]`` keeps one power-function EMA
(:class:`diffusion.ema.PowerEMA`) per listed relative width sigma_rel and writes both to
``<run>/posthoc/step_XXXXXXX.pt`` every ``train.posthoc_every`` steps and at every checkpoint.
A snapshot i taken after t_i EMA updates with exponent gamma_i averages the training weights with
the density

    p_i(tau) = (gamma_i + 1) tau^gamma_i / t_i^(gamma_i + 1)   on [0, t_i]      (Karras eq. 2)

(:class:`~diffusion.ema.PowerEMA` shows the discrete weights are this density over unit bins).
Any target profile p_r of another width is approximated by a linear combination sum_i x_i p_i,
with x minimising the L2 distance ||sum_i x_i p_i - p_r||: the normal equations A x = b with
A_ij = <p_i, p_j> and b_i = <p_i, p_r> (Karras appendix C.3), where for two power densities

    <p_a, p_b> = (g_a + 1)(g_b + 1) min(t_a, t_b)^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a+1) t_b^(g_b+1)).

The same x combines the snapshots' weights into the target's (the EMA is linear in the weights).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion.checkpoint import load_saved, save_checkpoint
from diffusion.ema import PowerEMA
from diffusion.errors import CheckpointError, ConfigError

MAX_SIGMA_REL = 1 / math.sqrt(12)  # gamma = 0, the plain average of all weights so far
SNAPSHOT_FOLDER = "posthoc"


def sigma_rel_from_gamma(gamma: float) -> float:
    """The standard deviation of the density p(tau) on [0, t], relative to t (Karras eq. 3)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_sigma_rel(sigma_rel: float, what: str = "sigma_rel") -> float:
    """The exponent gamma >= 0 whose profile has relative width ``sigma_rel`` in (0, 1/sqrt(12)]:
    the largest real root of sigma_rel^2 (gamma + 2)^2 (gamma + 3) - (gamma + 1) = 0."""
    if not 0.0 < sigma_rel <= MAX_SIGMA_REL:
        raise ConfigError(f"{what}: expected a relative EMA length in (0, {MAX_SIGMA_REL:.4f}], got {sigma_rel}")
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return max(0.0, float(roots[np.abs(roots.imag) < 1e-9].real.max()))


def profile_overlap(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """<p_a, p_b>, the integral of the product of two power densities (module docstring), in logs
    so that t^(gamma + 1) cannot overflow for long runs and narrow profiles."""
    g = gamma_a + gamma_b + 1
    log = (math.log(gamma_a + 1) + math.log(gamma_b + 1) + g * math.log(min(t_a, t_b)) - math.log(g)
           - (gamma_a + 1) * math.log(t_a) - (gamma_b + 1) * math.log(t_b))
    return math.exp(log)


@dataclass(frozen=True)
class Fit:
    """Coefficients of the snapshots (in their order) and the relative L2 error of the fit."""

    coefficients: np.ndarray
    relative_error: float


def fit_profile(snapshots: list[tuple[float, float]], target: tuple[float, float]) -> Fit:
    """Least-squares coefficients of the profiles ``(t_i, gamma_i)`` that best match ``(t_r, gamma_r)``."""
    A = np.array([[profile_overlap(*a, *b) for b in snapshots] for a in snapshots])
    b = np.array([profile_overlap(*a, *target) for a in snapshots])
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    target_norm = profile_overlap(*target, *target)
    residual = max(0.0, float(x @ A @ x - 2 * x @ b + target_norm))
    return Fit(x, math.sqrt(residual / target_norm))


def snapshot_path(run_dir: Path, step: int) -> Path:
    return run_dir / SNAPSHOT_FOLDER / f"step_{step:07d}.pt"


def write_snapshot(run_dir: Path, step: int, profiles: list[PowerEMA]) -> Path:
    """Write the profiles' current averages (atomically) as the snapshot of ``step``."""
    state = {
        "step": step,
        "updates": profiles[0].updates,
        "gammas": [p.gamma for p in profiles],
        "weights": [p.state_dict() for p in profiles],
    }
    return save_checkpoint(state, snapshot_path(run_dir, step))


def snapshots_until(run_dir: Path, step: int) -> list[Path]:
    """The run's snapshot files up to ``step``, oldest first."""
    found = []
    for path in (run_dir / SNAPSHOT_FOLDER).glob("step_*.pt"):
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        if match and int(match[1]) <= step:
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


def reconstruct(run_dir: Path, step: int, sigma_rel: float) -> tuple[dict[str, torch.Tensor], Fit]:
    """The weights of the power-function EMA of relative width ``sigma_rel`` at ``step``, rebuilt
    from the snapshots in ``run_dir`` (one-line errors when they are missing or unreadable)."""
    gamma = gamma_from_sigma_rel(sigma_rel, "--ema-length")
    paths = snapshots_until(run_dir, step)
    if not paths or paths[-1] != snapshot_path(run_dir, step):
        have = f" (it has snapshots up to {paths[-1].name})" if paths else ""
        raise CheckpointError(
            f"{run_dir / SNAPSHOT_FOLDER}: no post-hoc EMA snapshot of step {step}{have}; a run keeps them when"
            " trained with train.posthoc_ema, e.g. [0.05, 0.1]"
        )
    # Memory-mapped: only the metadata is read here, and one snapshot's tensors at a time below,
    # so a long run's snapshots (hundreds of MB each for a large model) never sit in memory at once.
    snapshots = [_read_snapshot(path) for path in paths]
    profiles = [(s["updates"], g) for s in snapshots for g in s["gammas"]]
    fit = fit_profile(profiles, (snapshots[-1]["updates"], gamma))
    weights: dict[str, torch.Tensor] = {}
    coefficients = iter(fit.coefficients.tolist())
    for snapshot in snapshots:
        for state in snapshot["weights"]:
            x = next(coefficients)
            for name, tensor in state.items():
                if not tensor.is_floating_point():
                    weights[name] = tensor
                elif name in weights:
                    weights[name] += x * tensor.double()
                else:
                    weights[name] = x * tensor.double()
    reference = snapshots[-1]["weights"][0]
    return {name: value.to(reference[name].dtype) for name, value in weights.items()}, fit


def _read_snapshot(path: Path) -> dict:
    state = load_saved(path, mmap=True)
    if not isinstance(state, dict) or not {"updates", "gammas", "weights"} <= state.keys():
        raise CheckpointError(f"{path}: not a post-hoc EMA snapshot (expected the keys updates, gammas, weights)")
    if state["updates"] < 1:
        raise CheckpointError(f"{path}: a snapshot taken before the first EMA update cannot be used")
    return state
