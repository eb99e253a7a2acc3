"""Post-hoc EMA: the power-function profiles in closed form, their reconstruction, and the run
folder and command-line path from training to ``inference.py --ema-length``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, subprocess_env
from test_train import tiny
from torch import nn

from diffusion.checkpoint import load_checkpoint
from diffusion.ema import PowerEMA
from diffusion.errors import CheckpointError, ConfigError
from diffusion.export import main as export_main
from diffusion.generate import load_model
from diffusion.posthoc_ema import (
    MAX_SIGMA_REL,
    fit_profile,
    gamma_from_sigma_rel,
    profile_overlap,
    reconstruct,
    sigma_rel_from_gamma,
    snapshots_until,
    write_snapshot,
)
from diffusion.trainer import NonFiniteLossError, train


class Vector(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def test_sigma_rel_and_gamma_are_inverse_and_match_the_published_pairs():
    """Karras et al. 2024 sec. 3.1: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94."""
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma_rel in (0.001, 0.03, 0.2, MAX_SIGMA_REL):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)
    assert gamma_from_sigma_rel(MAX_SIGMA_REL) == pytest.approx(0.0, abs=1e-9)  # the plain average
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ConfigError, match="expected a relative EMA length"):
            gamma_from_sigma_rel(bad)


def test_power_ema_weighs_each_update_by_the_binned_power_density():
    """Weights e_1, ..., e_t fed in turn: the average is the weight vector itself, which must be
    (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1), with relative width sigma_rel."""
    t, gamma = 400, gamma_from_sigma_rel(0.1)
    model = Vector(t)
    ema = PowerEMA(model, gamma)
    for tau in range(t):
        with torch.no_grad():
            model.w.zero_()[tau] = 1.0
        ema.update(model)
    weights = ema.state_dict()["w"].numpy()
    tau = np.arange(1, t + 1, dtype=np.float64)
    np.testing.assert_allclose(weights, (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1), atol=1e-12)
    assert weights.sum() == pytest.approx(1.0)
    centre = (tau - 0.5) / t
    mean = (weights * centre).sum()
    assert math.sqrt((weights * (centre - mean) ** 2).sum()) == pytest.approx(0.1, rel=0.01)


def test_profile_overlap_matches_numerical_integration():
    grid = np.linspace(0.0, 700.0, 2_000_001)

    def density(t: float, gamma: float) -> np.ndarray:
        return np.where(grid <= t, (gamma + 1) * grid**gamma / t ** (gamma + 1), 0.0)

    for a, b in [((700.0, 6.94), (700.0, 16.97)), ((300.0, 2.0), (650.0, 30.0)), ((500.0, 0.5), (200.0, 0.5))]:
        numeric = np.trapezoid(density(*a) * density(*b), grid)
        assert profile_overlap(*a, *b) == pytest.approx(numeric, rel=1e-4)
    assert math.isfinite(profile_overlap(500_000, 500.0, 400_000, 600.0))  # no overflow of t^(gamma+1)


def test_a_stored_profile_is_fitted_by_itself():
    snapshots = [(t, g) for t in (100, 200, 300) for g in (gamma_from_sigma_rel(0.05), gamma_from_sigma_rel(0.1))]
    fit = fit_profile(snapshots, snapshots[3])
    assert fit.relative_error < 1e-6
    np.testing.assert_allclose(fit.coefficients, np.eye(6)[3], atol=1e-5)


def run_profiles(trajectory: np.ndarray, widths: list[float], every: int, run_dir: Path | None = None) -> list[np.ndarray]:
    """Feed ``trajectory[tau]`` (one weight vector per step) to power EMAs of ``widths``; write
    snapshots every ``every`` steps to ``run_dir``; return the final averages."""
    model = Vector(trajectory.shape[1])
    profiles = [PowerEMA(model, gamma_from_sigma_rel(w)) for w in widths]
    for step, weights in enumerate(trajectory, start=1):
        with torch.no_grad():
            model.w.copy_(torch.from_numpy(weights))
        for profile in profiles:
            profile.update(model)
        if run_dir is not None and step % every == 0:
            write_snapshot(run_dir, step, profiles)
    return [p.state_dict()["w"].numpy() for p in profiles]


@pytest.mark.parametrize("target", [0.03, 0.075, 0.15, 0.25])
def test_reconstruction_matches_an_ema_of_that_length_run_directly(tmp_path, target):
    """Random-walk weights (8 coordinates, 1000 steps), snapshots of 0.05 and 0.10 every 50 steps:
    the rebuilt EMA of another width is close to the one computed directly, much closer than the
    stored profiles themselves are."""
    rng = np.random.default_rng(0)
    trajectory = np.cumsum(rng.normal(size=(1000, 8)), axis=0)
    run_profiles(trajectory, [0.05, 0.1], every=50, run_dir=tmp_path)
    (direct,) = run_profiles(trajectory, [target], every=0)
    rebuilt, fit = reconstruct(tmp_path, 1000, target)
    stored = run_profiles(trajectory, [0.05, 0.1], every=0)
    error = np.abs(rebuilt["w"].numpy() - direct).max()
    assert fit.relative_error < 0.1
    assert error < 0.1 * min(np.abs(s - direct).max() for s in stored)
    assert rebuilt["w"].dtype == torch.float64


def test_reconstruction_errors_name_the_folder_and_what_is_missing(tmp_path):
    with pytest.raises(CheckpointError, match=r"posthoc: no post-hoc EMA snapshot of step 10; .*train.posthoc_ema"):
        reconstruct(tmp_path, 10, 0.1)
    run_profiles(np.ones((20, 2)), [0.05, 0.1], every=5, run_dir=tmp_path)
    assert [p.name for p in snapshots_until(tmp_path, 12)] == ["step_0000005.pt", "step_0000010.pt"]
    with pytest.raises(CheckpointError, match=r"step 12 \(it has snapshots up to step_0000010.pt\)"):
        reconstruct(tmp_path, 12, 0.1)
    with pytest.raises(ConfigError, match="--ema-length: expected a relative EMA length"):
        reconstruct(tmp_path, 10, 0.5)
    (tmp_path / "posthoc" / "step_0000015.pt").write_bytes(b"not a snapshot")
    with pytest.raises(CheckpointError, match="step_0000015.pt: not a checkpoint"):
        reconstruct(tmp_path, 15, 0.1)


# Training and sampling ---------------------------------------------------------------------


POSTHOC = ["train.posthoc_ema=[0.05,0.1]", "train.posthoc_every=3", "train.checkpoint_every=4"]


def test_training_keeps_snapshots_and_inference_rebuilds_any_length(tmp_path, capsys):
    run = train(tiny(tmp_path, *POSTHOC, "train.steps=10", "train.ema_decay=0.5"))
    names = [p.name for p in snapshots_until(run, 10)]
    assert names == [f"step_{s:07d}.pt" for s in (3, 4, 6, 8, 9, 10)]  # every 3 steps and at every checkpoint
    state = load_checkpoint(run)
    assert len(state["posthoc_ema"]) == 2
    snapshot = torch.load(run / "posthoc" / "step_0000010.pt", weights_only=True)
    assert snapshot["updates"] == 10 and snapshot["gammas"] == pytest.approx([16.97, 6.94], abs=0.01)
    for stored, kept in zip(snapshot["weights"], state["posthoc_ema"], strict=True):
        assert all(torch.equal(stored[k], kept[k]) for k in kept)

    classic = load_model(run)
    assert classic.weights == "ema"
    rebuilt = load_model(run, ema_length=0.1)
    assert rebuilt.weights == "post-hoc EMA 0.1"
    narrow = snapshot["weights"][1]  # 0.1 is stored: rebuilt as itself
    for name, value in rebuilt.model.state_dict().items():
        torch.testing.assert_close(value, narrow[name].to(value.dtype), atol=1e-5, rtol=1e-4)
    assert "warning" not in capsys.readouterr().err
    load_model(run, ema_length=0.01)  # far narrower than the stored profiles: a warning
    assert "fit an EMA of length 0.01 only to" in capsys.readouterr().err
    other = load_model(run, ema_length=0.2).model.state_dict()
    assert not torch.allclose(other["conv_in.weight"], narrow["conv_in.weight"], atol=1e-4)

    older = load_model(run / "checkpoints" / "step_0000008.pt", ema_length=0.2)
    assert older.step == 8 and older.weights == "post-hoc EMA 0.2"

    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "pipe"), "--ema-length", "0.1"]) == 0
    exported = load_model(tmp_path / "pipe").model.state_dict()["conv_in.weight"]
    torch.testing.assert_close(exported, rebuilt.model.state_dict()["conv_in.weight"])


def infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "inference.py", *args], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_inference_ema_length_flag_and_the_config_key(tmp_path):
    run = train(tiny(tmp_path, *POSTHOC, "train.steps=6", "sample.ema_length=0.15"))
    plain = train(tiny(tmp_path, "train.steps=2", run="plain"))
    common = ["--num-samples", "2", "--steps", "2", "--video", "none", "--threads", "1"]
    for flag, expected in [([], "post-hoc EMA 0.15"), (["--ema-length", "0.07"], "post-hoc EMA 0.07"),
                           (["--ema-length", "none"], "ema")]:
        out = tmp_path / f"out{len(flag)}{expected[-2:]}"
        result = infer("--checkpoint", str(run), *common, "--out", str(out), *flag)
        assert result.returncode == 0, result.stderr
        assert f"{expected} weights" in result.stdout
        assert json.loads((out / "samples.json").read_text())["weights"] == expected

    for args, message in [
        (["--checkpoint", str(plain), "--ema-length", "0.1"], "no post-hoc EMA snapshot of step 2"),
        (["--checkpoint", str(run), "--ema-length", "0.5"], "expected a relative EMA length in (0, 0.2887]"),
        (["--checkpoint", str(run), "--ema-length", "long"], "or 'none', got 'long'"),
        (["--checkpoint", str(run), "--ema-length", "0.1", "--no-ema"], "--no-ema and --ema-length"),
    ]:
        result = infer(*args, *common, "--out", str(tmp_path / "never"))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_resuming_needs_the_same_profiles(tmp_path):
    run = train(tiny(tmp_path, "train.steps=2"))
    with pytest.raises(CheckpointError, match=r"trained with train.posthoc_ema=\[\] but the config says \[0.05, 0.1\]"):
        train(tiny(tmp_path, *POSTHOC, "train.steps=3"), resume=run)
    old = load_checkpoint(run)  # written before post-hoc EMA existed: neither the key nor the state
    del old["config"]["train"]["posthoc_ema"], old["posthoc_ema"]
    torch.save(old, run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match="trained without train.posthoc_ema"):
        train(tiny(tmp_path, *POSTHOC, "train.steps=3"), resume=run)
    run = train(tiny(tmp_path, *POSTHOC, "train.steps=2", run="with"))
    with pytest.raises(CheckpointError, match=r"trained with train.posthoc_ema=\[0.05, 0.1\] but the config says \[0.1\]"):
        train(tiny(tmp_path, "train.posthoc_ema=[0.1]", "train.steps=3", run="with"), resume=run)


def test_snapshots_of_a_start_that_wrote_no_checkpoint_are_cleared_when_it_is_rerun(tmp_path):
    """A run killed after its first snapshots but before its first checkpoint leaves snapshots
    that a rerun in the same folder must not mix with its own."""
    run = train(tiny(tmp_path, *POSTHOC, "train.steps=3", "train.seed=5"))
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        checkpoint.unlink()  # as if killed before its first checkpoint
    stale = torch.load(run / "posthoc" / "step_0000003.pt", weights_only=True)
    train(tiny(tmp_path, *POSTHOC, "train.steps=2"))
    assert [p.name for p in snapshots_until(run, 10)] == ["step_0000002.pt"]
    fresh = torch.load(run / "posthoc" / "step_0000002.pt", weights_only=True)
    assert not torch.equal(fresh["weights"][0]["conv_in.weight"], stale["weights"][0]["conv_in.weight"])


def test_a_diverged_run_writes_no_snapshot_of_its_non_finite_weights(tmp_path):
    with pytest.raises(NonFiniteLossError):
        train(tiny(tmp_path, *POSTHOC, "train.steps=4", "train.lr=1e30", "train.warmup_steps=0", "log.log_every=10"))
    assert not list((tmp_path / "Models" / "run" / "posthoc").glob("*.pt"))


def test_bad_posthoc_settings_are_refused(tmp_path):
    for override, message in [
        ("train.posthoc_ema=[0.05,0.05]", "train.posthoc_ema: a width is listed twice"),
        ("train.posthoc_ema=[0.4]", "train.posthoc_ema: expected a relative EMA length in (0, 0.2887], got 0.4"),
        ("train.posthoc_every=0", "train.posthoc_every: expected a positive value, got 0"),
        ("sample.ema_length=0", "sample.ema_length: expected a relative EMA length"),
    ]:
        with pytest.raises(ConfigError) as err:
            tiny(tmp_path, override)
        assert message in str(err.value)
