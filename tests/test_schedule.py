"""The noise schedule against closed forms computed independently in float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas


def numpy_linear_tables(T: int = 1000) -> dict[str, np.ndarray]:
    """beta_1..beta_T, alpha_bar_1..alpha_bar_T in the paper's 1-based indexing (index 0 unused)."""
    beta = np.concatenate([[np.nan], np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)])
    alpha_bar = np.concatenate([[1.0], np.cumprod(1 - beta[1:])])
    return {"beta": beta, "alpha_bar": alpha_bar}


def test_index_convention_code_t_is_paper_t_plus_one():
    s = NoiseSchedule(1000)
    ref = numpy_linear_tables()
    for t in (0, 1, 487, 999):
        assert s.betas[t].item() == pytest.approx(ref["beta"][t + 1], rel=1e-12)
        assert s.alpha_bar[t].item() == pytest.approx(ref["alpha_bar"][t + 1], rel=1e-12)
        assert s.alpha_bar_prev[t].item() == pytest.approx(ref["alpha_bar"][t], rel=1e-12)
    assert s.alpha_bar_prev[0].item() == 1.0
    assert s.betas.dtype == torch.float64


def test_golden_posterior_variance_values():
    """The values diffusers' DDPMScheduler tests check for the linear T = 1000 schedule."""
    s = NoiseSchedule(1000)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_variance[487].item() == pytest.approx(0.00979, abs=1e-5)
    assert s.posterior_variance[999].item() == pytest.approx(0.02, abs=1e-5)
    assert math.isfinite(s.posterior_log_variance[0].item())
    assert s.posterior_log_variance[0].item() == pytest.approx(math.log(s.posterior_variance[1].item()))


def test_linear_betas_scale_with_timesteps():
    b = linear_betas(250)
    assert b[0].item() == pytest.approx(4e-4) and b[-1].item() == pytest.approx(0.08)
    assert len(b) == 250


def test_cosine_schedule_alpha_bar_closed_form():
    T, s = 1000, 0.008
    betas = cosine_betas(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    alpha_bar = torch.cumprod(1 - betas, 0)
    for t in (0, 100, 500, 900):  # away from the clipped end
        assert alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max().item() <= 0.999


@pytest.mark.parametrize("t", [1, 10, 487, 999])
def test_posterior_is_product_of_gaussians(t):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precision-weighted combination."""
    s = NoiseSchedule(1000)
    ref = numpy_linear_tables()
    p = t + 1  # paper index of code t
    beta, alpha = ref["beta"][p], 1 - ref["beta"][p]
    ab_prev = ref["alpha_bar"][p - 1]
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=5), rng.normal(size=5)
    precision = alpha / beta + 1 / (1 - ab_prev)
    mean_ref = (math.sqrt(alpha) * xt / beta + math.sqrt(ab_prev) * x0 / (1 - ab_prev)) / precision
    tt = torch.full((5,), t)
    mean, var, log_var = s.q_posterior(torch.from_numpy(x0), torch.from_numpy(xt), tt)
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-10)
    np.testing.assert_allclose(var.numpy().ravel(), 1 / precision, rtol=1e-10)
    np.testing.assert_allclose(log_var.numpy().ravel(), math.log(1 / precision), rtol=1e-10)


def test_posterior_at_t0_is_the_data():
    s = NoiseSchedule(1000)
    x0, xt = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    mean, var, _ = s.q_posterior(x0, xt, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_moments_match_100k_samples(t):
    s = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(t)
    n = 100_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    xt = s.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, dtype=torch.float64, generator=g))
    ab = numpy_linear_tables()["alpha_bar"][t + 1]
    mean_se = math.sqrt((1 - ab) / n)
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=5 * mean_se)
    assert xt.var().item() == pytest.approx(1 - ab, rel=5 * math.sqrt(2 / n))


def test_x0_round_trip_and_parameterisations_agree():
    s = NoiseSchedule(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 4, 4, dtype=torch.float64, generator=g)
    eps = torch.randn(8, 3, 4, 4, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 2, 100, 500, 800, 998, 999])
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(s.eps_from_x0(xt, t, x0), eps)
    v = s.v_target(x0, t, eps)
    for objective, output in (("eps", eps), ("x0", x0), ("v", v)):
        s.objective = objective
        pred_x0, pred_eps = s.predict_x0_eps(output, xt, t)
        torch.testing.assert_close(pred_x0, x0)
        torch.testing.assert_close(pred_eps, eps)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_training_loss_is_zero_for_the_exact_target_only(objective):
    """An oracle returning the objective's target has zero loss; returning another target does not."""
    s = NoiseSchedule(1000, objective=objective)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    targets = {"eps": noise, "x0": x0, "v": s.v_target(x0, t, noise)}
    for name, target in targets.items():
        loss = s.training_loss(lambda xt, tt, target=target: target, x0, t, noise)
        if name == objective:
            assert loss.item() < 1e-10
        else:
            assert loss.item() > 1e-2


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_gamma_weights_the_x0_error_by_min_snr_gamma(objective):
    """Hang et al. eq. 10: whatever the objective, a network whose implied x0 is off by delta has
    loss mean_i min(SNR_i, gamma) mean(delta_i^2); without the weighting each objective scales
    the x0 error differently (eps: SNR, x0: 1, v: SNR + 1)."""
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g), torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g)
    delta = 0.1 * torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 5, 50, 200, 400, 600, 800, 999])
    for gamma in (5.0, 0.5):
        s = NoiseSchedule(1000, "cosine", objective=objective, min_snr_gamma=gamma)
        xt = s.q_sample(x0, t, noise)
        eps_hat = s.eps_from_x0(xt, t, x0 + delta)
        output = {"eps": eps_hat, "x0": x0 + delta, "v": s.v_target(x0 + delta, t, eps_hat)}[objective]
        loss = s.training_loss(lambda xt_, tt, output=output: output, x0, t, noise)
        snr = s.alpha_bar[t] / (1 - s.alpha_bar[t])
        expected = (snr.clamp(max=gamma) * delta.pow(2).flatten(1).mean(1)).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert snr.min() < 0.5 and snr.max() > 5  # both sides of both clips are exercised


def test_min_snr_gamma_zero_is_plain_mse_and_comes_from_the_config():
    from diffusion.config import DiffusionConfig

    s = NoiseSchedule.from_config(DiffusionConfig(min_snr_gamma=5.0))
    assert s.min_snr_gamma == 5.0 and s.loss_weight.max() < 1.0 + 1e-12
    off = NoiseSchedule.from_config(DiffusionConfig())
    g = torch.Generator().manual_seed(4)
    x0, noise, out = (torch.randn(4, 1, 4, 4, generator=g) for _ in range(3))
    t = torch.tensor([1, 10, 100, 900])
    assert off.training_loss(lambda xt, tt: out, x0, t, noise) == torch.nn.functional.mse_loss(out, noise)
    assert s.training_loss(lambda xt, tt: out, x0, t, noise) < off.training_loss(lambda xt, tt: out, x0, t, noise)
    with pytest.raises(ValueError, match="min_snr_gamma"):
        NoiseSchedule(10, min_snr_gamma=-1)


def test_training_loss_samples_t_uniformly_over_all_steps():
    s = NoiseSchedule(10)
    t = s.sample_timesteps(20_000, "cpu", torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=10)
    assert t.min() == 0 and t.max() == 9
    assert counts.min() > 1800 and counts.max() < 2200


def test_gather_broadcasts_and_casts():
    s = NoiseSchedule(1000)
    x = torch.zeros(3, 2, 5, 5, dtype=torch.float32)
    out = s.q_sample(x + 1, torch.tensor([0, 1, 2]), x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out[1, 1, 4, 4].item() == pytest.approx(s.sqrt_alpha_bar[1].item(), rel=1e-6)


def test_from_config_follows_every_diffusion_key():
    from diffusion.config import DiffusionConfig

    linear = NoiseSchedule.from_config(DiffusionConfig(timesteps=500, beta_start=2e-4, beta_end=0.01, objective="v"))
    assert linear.timesteps == 500 and linear.objective == "v"
    torch.testing.assert_close(linear.betas, linear_betas(500, 2e-4, 0.01))
    cosine = NoiseSchedule.from_config(DiffusionConfig(timesteps=500, schedule="cosine", objective="x0"))
    assert cosine.objective == "x0"
    torch.testing.assert_close(cosine.betas, cosine_betas(500))
