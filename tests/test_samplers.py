"""The samplers against closed forms: Gaussian data, where the ideal network is known exactly.

For x0 ~ N(mu, s^2 I) and x_t = a x0 + b eps (a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)),
E[eps | x_t] = b (x_t - a mu) / (a^2 s^2 + b^2) and E[x0 | x_t] = (a s^2 x_t + b^2 mu) / (a^2 s^2 + b^2).
Plugged in as the "network", every sampler should return samples with mean mu and std s, up
to its discretisation error and the Monte-Carlo error of the estimate.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from torch import nn

import diffusion.samplers
from diffusion.config import SampleConfig
from diffusion.samplers import (
    NoiseStreams,
    Reference,
    animation_steps,
    ddpm_steps,
    estimate_eps_moments,
    generate,
    make_denoiser,
    reverse_process,
    timestep_sequence,
    unwrap,
)
from diffusion.schedule import NoiseSchedule
from models import UNet

MU, S = 0.3, 0.5  # the Gaussian data: pixels ~ N(0.3, 0.5^2), independent


class GaussianOracle(nn.Module):
    """The exact minimum-MSE network for x0 ~ N(mu, s^2 I) under ``objective`` (eps, x0 or v)."""

    def __init__(self, schedule: NoiseSchedule, mu: float = MU, s: float = S, objective: str = "eps", image_size: int = 4):
        super().__init__()
        self.in_channels, self.image_size = 1, image_size
        self.mu, self.s, self.objective = mu, s, objective
        self.register_buffer("alpha_bar", schedule.alpha_bar.clone())
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device, like a real network

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        d = a * a * self.s**2 + b * b
        eps = b * (x - a * self.mu) / d
        x0 = (a * self.s**2 * x + b * b * self.mu) / d
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.objective]  # v: Salimans & Ho sec. 4


def batch_noise(shape: tuple[int, ...], seed: int = 0):
    """A noise source drawing whole batches from one generator (fast; the per-sample streams of
    ``generate`` are tested separately)."""
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(shape, generator=g)


def final(steps) -> torch.Tensor:
    *_, last = steps
    return last.x


# (sampler, steps, eta, ddpm variance) and the discretisation allowance (mean, std / s) of each.
# Since every update is linear in x_t and the noise, a sampler's output law for this Gaussian
# is exactly computable: test_output_law_of_each_sampler propagates it in float64 and checks the
# allowances below. They are first-order effects of finite steps (DDIM/DDPM) and of starting
# from N(0, I) rather than N(a_T mu, 1 - a_T^2) (the small mean offset of the ODE samplers):
#   ddpm 1000 beta: std 1.0015 s; beta_tilde: 0.9922 s (beta over-, beta_tilde under-disperses);
#   ddim 50 eta 0: std 0.9668 s, mean mu - 0.0009; eta 1: std 0.9326 s;
#   dpm++ 20: std 1.0231 s, mean mu - 0.0010; dpm++sde 20: std 1.0749 s (25 steps: 1.0451 s).
CASES = {
    "ddpm-1000-beta": (("ddpm", 1000, 0.0, "beta"), (0.0005, 0.005)),
    "ddpm-1000-beta_tilde": (("ddpm", 1000, 0.0, "beta_tilde"), (0.0005, 0.010)),
    "ddim-50-eta0": (("ddim", 50, 0.0, "beta"), (0.0015, 0.040)),
    "ddim-50-eta1": (("ddim", 50, 1.0, "beta"), (0.0005, 0.075)),
    "dpm++-20": (("dpm++", 20, 0.0, "beta"), (0.0015, 0.030)),
    "dpm++sde-20": (("dpm++sde", 20, 0.0, "beta"), (0.0005, 0.080)),
}


def run_case(model: nn.Module, schedule: NoiseSchedule, case: tuple, noise) -> torch.Tensor:
    sampler, steps, eta, variance = case
    return final(reverse_process(
        model, schedule, noise, sampler=sampler, steps=steps, eta=eta, clip_denoised=False, ddpm_variance=variance
    ))


@pytest.mark.parametrize("name", CASES)
def test_output_law_of_each_sampler(name):
    """The exact mean and std of each sampler's output, by linearity: with noise draws that are
    unit impulses (draw j is 1 in row j + 1 only) row 0 is the mean and the other rows minus it are
    the coefficients of the draws, whose squares sum to the variance."""
    case, (mean_tol, std_tol) = CASES[name]
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule, image_size=1).double()
    rows = case[1] + 2
    draws = iter(range(rows - 1))

    def impulses() -> torch.Tensor:
        z = torch.zeros(rows, 1, 1, 1, dtype=torch.float64)
        z[next(draws) + 1] = 1.0
        return z

    x = run_case(model, schedule, case, impulses).flatten()
    mean, std = x[0].item(), (x[1:] - x[0]).square().sum().sqrt().item()
    assert abs(mean - MU) <= mean_tol
    assert abs(std / S - 1) <= std_tol


@pytest.mark.parametrize("name", CASES)
def test_gaussian_data_is_recovered(name):
    """4096 samples of 4x4 pixels: 65536 independent values. Monte-Carlo standard errors: s/256 for
    the mean, about s/362 for the std; the tolerance is the discretisation allowance plus 4.5 of them
    (a false failure has odds below 1e-5)."""
    case, (mean_tol, std_tol) = CASES[name]
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    x = run_case(model, schedule, case, batch_noise((4096, 1, 4, 4)))
    n = x.numel()
    assert abs(x.mean().item() - MU) <= mean_tol + 4.5 * S / math.sqrt(n)
    assert abs(x.std().item() - S) <= std_tol * S + 4.5 * S / math.sqrt(2 * n)


def exact_eps_moments(schedule: NoiseSchedule, steps: int) -> list[float]:
    """Gamma_t = E ||E[eps | x_t]||^2 / d = b^2 / (a^2 s^2 + b^2) for the Gaussian data (module docstring)."""
    ab = schedule.alpha_bar.double()[timestep_sequence(schedule.timesteps, steps)]
    return ((1 - ab) / (ab * S**2 + 1 - ab)).tolist()


def output_law(schedule: NoiseSchedule, steps: int, variance: str, moments: list[float] | None = None) -> tuple[float, float]:
    """The exact (mean, std) of the ddpm sampler's output for the Gaussian oracle (impulse noise,
    as in test_output_law_of_each_sampler)."""
    model = GaussianOracle(schedule, image_size=1).double()
    rows = steps + 2
    draws = iter(range(rows - 1))

    def impulses() -> torch.Tensor:
        z = torch.zeros(rows, 1, 1, 1, dtype=torch.float64)
        z[next(draws) + 1] = 1.0
        return z

    x = final(reverse_process(model, schedule, impulses, sampler="ddpm", steps=steps, clip_denoised=False,
                              ddpm_variance=variance, eps_moments=moments)).flatten()
    return x[0].item(), (x[1:] - x[0]).square().sum().sqrt().item()


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_analytic_ddpm_variance_is_exact_for_gaussian_data_at_any_step_count(steps):
    """Bao et al.'s optimal variance makes each step the true q(x_s | x_t) when the data are
    Gaussian (the posterior variance of x0 does not depend on x_t): with few steps the output law
    is exact up to the x_T ~ N(0, I) start, while beta over- and beta_tilde under-disperse."""
    schedule = NoiseSchedule(1000)
    mean, std = output_law(schedule, steps, "analytic", exact_eps_moments(schedule, steps))
    assert abs(mean - MU) <= 0.0005 and abs(std / S - 1) <= 0.002
    for variance in ("beta", "beta_tilde"):
        _, other = output_law(schedule, steps, variance)
        assert abs(other / S - 1) > 10 * abs(std / S - 1)


def test_eps_moments_estimate_matches_the_closed_form():
    """4096 reference images of 16 Gaussian pixels: Gamma_t within 2% of b^2 / (a^2 s^2 + b^2)."""
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    images = MU + S * torch.randn((4096, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    options = SampleConfig(sampler="ddpm", steps=10, batch_size=1024, seed=3, ddpm_variance="analytic")
    estimate = estimate_eps_moments(model, schedule, options, Reference(images))
    torch.testing.assert_close(torch.tensor(estimate), torch.tensor(exact_eps_moments(schedule, 10)), rtol=0.02, atol=0)
    assert estimate == estimate_eps_moments(model, schedule, options, Reference(images))  # seeded


def test_reference_draw_picks_images_and_their_labels_in_minus_one_to_one():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1) * 6
    labels = np.arange(10) * 10
    reference = Reference.draw(images, labels, 4, seed=0)
    assert reference.images.shape == (4, 1, 2, 2) and reference.images.min() >= -1 and reference.images.max() <= 1
    chosen = (reference.labels // 10).tolist()
    assert len(set(chosen)) == 4
    torch.testing.assert_close(reference.images[0, 0], torch.from_numpy(images[chosen[0], :, :, 0]).float() / 127.5 - 1)
    assert len(Reference.draw(images, None, 50, seed=0).images) == 10  # all, when fewer than asked


def test_analytic_variance_needs_its_moments():
    schedule = NoiseSchedule(100)
    with pytest.raises(ValueError, match="needs one eps moment per step"):
        generate(GaussianOracle(schedule), schedule, 2, sampler="ddpm", steps=4, ddpm_variance="analytic")


@pytest.mark.parametrize("case", [("ddpm", 50, 0.0, "beta_tilde"), ("ddim", 20, 0.5, "beta"), ("dpm++", 15, 0.0, "beta"),
                                  ("dpm++sde", 15, 0.0, "beta")])
def test_objectives_eps_x0_v_give_the_same_samples(case):
    """The exact eps-, x0- and v-networks are one predictor in three parameterisations, so
    ``predict_x0_eps`` must make every sampler produce the same samples from the same noise."""
    outputs = []
    for objective in ("eps", "x0", "v"):
        schedule = NoiseSchedule(1000, objective=objective)
        model = GaussianOracle(schedule, objective=objective)
        outputs.append(run_case(model, schedule, case, batch_noise((64, 1, 4, 4))))
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-4, rtol=0)
    torch.testing.assert_close(outputs[2], outputs[0], atol=2e-4, rtol=0)


def test_ddpm_with_every_timestep_is_ho_algorithm_2():
    """With S = T each ddpm step is the schedule's q_posterior mean of (x0_hat, x_t) plus sqrt(beta_t) z."""
    T = 100
    schedule = NoiseSchedule(T)
    model = GaussianOracle(schedule).double()
    draws = torch.randn(T + 1, 8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    supply = iter(draws)
    denoise = make_denoiser(model, schedule, clip_denoised=True)
    steps = list(ddpm_steps(denoise, schedule.alpha_bar.tolist(), list(range(T - 1, -1, -1)), lambda: next(supply)))
    x = draws[0]
    for k, t in enumerate(range(T - 1, -1, -1)):
        t_batch = torch.full((8,), t)
        x0 = schedule.x0_from_eps(x, t_batch, model(x, t_batch)).clamp(-1, 1)
        mean, _, _ = schedule.q_posterior(x0, x, t_batch)
        x = mean + schedule.betas[t].sqrt() * draws[k + 1] if t > 0 else mean
        torch.testing.assert_close(steps[k].x0, x0)
        torch.testing.assert_close(steps[k].x, x)


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddim_eta_1_is_ddpm_with_beta_tilde(steps):
    """Song et al. sec. 4.1: eta = 1 makes DDIM the DDPM posterior with variance beta_tilde, also respaced."""
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    ddim = run_case(model, schedule, ("ddim", steps, 1.0, "beta"), batch_noise((32, 1, 4, 4)))
    ddpm = run_case(model, schedule, ("ddpm", steps, 0.0, "beta_tilde"), batch_noise((32, 1, 4, 4)))
    torch.testing.assert_close(ddim, ddpm, atol=1e-4, rtol=0)


def test_ddim_eta_0_is_a_deterministic_function_of_x_T():
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    x_T = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(3))

    def only_x_T():  # a second draw would raise StopIteration: eta = 0 must not draw any
        yield x_T.clone()

    first = run_case(model, schedule, ("ddim", 50, 0.0, "beta"), only_x_T().__next__)
    again = run_case(model, schedule, ("ddim", 50, 0.0, "beta"), only_x_T().__next__)
    other = run_case(model, schedule, ("ddim", 50, 0.0, "beta"), batch_noise((16, 1, 4, 4), seed=4))
    assert torch.equal(first, again)
    assert (first - other).abs().min() > 0  # every sample depends on its own x_T


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 copy= notice inside diffusers
def test_dpm_solver_pp_matches_diffusers():
    """An independent implementation of DPM-Solver++(2M) (data prediction, final step to sigma = 0)."""
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    x_T = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = run_case(model, schedule, ("dpm++", 20, 0.0, "beta"), lambda: x_T.clone())
    reference = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )
    reference.set_timesteps(timesteps=timestep_sequence(1000, 20))
    x = x_T.clone()
    for t in reference.timesteps:
        x = reference.step(model(x, torch.full((64,), int(t))), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_dpm_solver_pp_sde_matches_diffusers():
    """An independent implementation of SDE-DPM-Solver++(2M), fed the same noise draws."""
    diffusers = pytest.importorskip("diffusers")
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    draws = torch.randn(21, 64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    supply = iter(draws)
    ours = run_case(model, schedule, ("dpm++sde", 20, 0.0, "beta"), lambda: next(supply).clone())
    reference = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear", algorithm_type="sde-dpmsolver++", solver_order=2, final_sigmas_type="zero"
    )
    reference.set_timesteps(timesteps=timestep_sequence(1000, 20))
    x = draws[0].clone()
    for k, t in enumerate(reference.timesteps):  # the last step multiplies its noise by sigma = 0
        z = draws[k + 1] if k + 1 < len(draws) else torch.zeros_like(x)
        x = reference.step(model(x, torch.full((64,), int(t))), t, x, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, x, atol=5e-5, rtol=0)


@pytest.mark.parametrize("steps", [2, 3])
def test_dpm_solver_pp_sde_first_order_step_is_ddpm_with_beta_tilde(steps):
    """Without history (its first step) the SDE solver is the DDPM posterior with beta_tilde, so with
    2 steps (one stochastic step, then the jump to x0) the samplers agree; from 3 steps on the
    second-order correction makes them differ."""
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule)
    sde = run_case(model, schedule, ("dpm++sde", steps, 0.0, "beta"), batch_noise((32, 1, 4, 4)))
    ddpm = run_case(model, schedule, ("ddpm", steps, 0.0, "beta_tilde"), batch_noise((32, 1, 4, 4)))
    if steps == 2:
        torch.testing.assert_close(sde, ddpm, atol=1e-5, rtol=0)
    else:
        assert (sde - ddpm).abs().max() > 1e-3


def test_clipping_keeps_every_predicted_x0_and_the_result_in_range():
    schedule = NoiseSchedule(1000)
    model = GaussianOracle(schedule, mu=0.8, s=0.6)  # a third of the data lies above 1
    for sampler in ("ddpm", "ddim", "dpm++", "dpm++sde"):
        steps = list(reverse_process(model, schedule, batch_noise((256, 1, 4, 4)), sampler=sampler, steps=20))
        assert all(step.x0.abs().max() <= 1 for step in steps)
        assert steps[-1].x.abs().max() <= 1 and steps[-1].x.max() == 1  # clipping was active


@pytest.mark.parametrize("timesteps", [1, 2, 3, 7, 10, 64, 100, 999, 1000, 4000])
def test_timestep_sequence_is_strictly_decreasing_from_T_minus_1_to_0(timesteps):
    for steps in sorted({*range(1, min(timesteps, 60) + 1), *range(timesteps - 5, timesteps + 1)} - {0, -1, -2, -3, -4}):
        seq = timestep_sequence(timesteps, steps)
        assert len(seq) == steps and seq[0] == timesteps - 1
        assert all(a > b for a, b in pairwise(seq)), (timesteps, steps)
        assert steps == 1 or seq[-1] == 0
    assert timestep_sequence(timesteps, timesteps) == list(range(timesteps - 1, -1, -1))
    for bad in (0, timesteps + 1):
        with pytest.raises(ValueError):
            timestep_sequence(timesteps, bad)


def test_timestep_sequence_is_dense_near_zero():
    seq = timestep_sequence(1000, 20)
    gaps = [a - b for a, b in pairwise(seq)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 10


@pytest.mark.parametrize(("steps", "frames"), [(1000, 40), (20, 40), (50, 7), (5, 1), (1, 3)])
def test_animation_frames_run_from_the_first_step_to_the_final_image_densest_at_the_end(steps, frames):
    timesteps = timestep_sequence(1000, steps)
    shown = animation_steps(timesteps, frames)
    assert len(shown) == frames and shown[-1] == steps - 1
    assert shown[0] == 0 or frames == 1
    assert shown == sorted(shown)
    if steps >= 2 * frames > 2:  # distinct frames, closer together in t near t = 0
        gaps = [timesteps[a] - timesteps[b] for a, b in pairwise(shown)]
        assert len(set(shown)) == frames and gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0] / 5


# generate(): batching, per-sample noise streams, wrappers ------------------------------------

def tiny_unet_and_schedule() -> tuple[UNet, NoiseSchedule]:
    """A small random U-Net predicting x0, so its samples are its (unsaturated) outputs."""
    torch.manual_seed(0)
    model = UNet(image_size=8, in_channels=3, base_channels=8, channel_mult=[1, 2], num_res_blocks=1,
                 attention_resolutions=[4], norm_groups=4, dropout=0.0)
    with torch.no_grad():  # the output layer starts at zero; give it weights so samples depend on them
        model.conv_out.weight.normal_(0, 0.05)
    return model, NoiseSchedule(100, objective="x0")


def test_noise_stream_of_a_sample_does_not_depend_on_its_batch():
    everyone = NoiseStreams(seed=7, indices=range(6), shape=(3, 2, 2), device="cpu")
    some = NoiseStreams(seed=7, indices=[4, 2], shape=(3, 2, 2), device="cpu")
    for _ in range(2 * NoiseStreams.CHUNK + 1):
        all_draws, some_draws = everyone(), some()
        assert torch.equal(some_draws[0], all_draws[4]) and torch.equal(some_draws[1], all_draws[2])
    assert not torch.equal(NoiseStreams(8, [2], (3, 2, 2), "cpu")()[0], NoiseStreams(7, [2], (3, 2, 2), "cpu")()[0])


@pytest.mark.parametrize(("sampler", "steps", "eta"), [("ddpm", 12, 0.0), ("ddim", 8, 0.7), ("dpm++", 6, 0.0)])
def test_generate_is_reproducible_and_independent_of_batch_size(sampler, steps, eta):
    model, schedule = tiny_unet_and_schedule()
    one_batch = generate(model, schedule, 5, sampler=sampler, steps=steps, eta=eta, seed=3, batch_size=5)
    batched = generate(model, schedule, 5, sampler=sampler, steps=steps, eta=eta, seed=3, batch_size=2)
    assert one_batch.shape == (5, 3, 8, 8) and one_batch.abs().max() <= 1
    torch.testing.assert_close(batched, one_batch, atol=1e-5, rtol=0)
    first_two = generate(model, schedule, 2, sampler=sampler, steps=steps, eta=eta, seed=3, batch_size=1)
    torch.testing.assert_close(first_two, one_batch[:2], atol=1e-5, rtol=0)
    last_three = generate(model, schedule, 3, sampler=sampler, steps=steps, eta=eta, seed=3, first=2, batch_size=2)
    torch.testing.assert_close(last_three, one_batch[2:], atol=1e-5, rtol=0)  # a process's share of the five
    other_seed = generate(model, schedule, 5, sampler=sampler, steps=steps, eta=eta, seed=4, batch_size=5)
    assert (other_seed - one_batch).abs().amax(dim=(1, 2, 3)).min() > 0.01


def test_generate_unwraps_models_restores_train_mode_and_reports_steps():
    model, schedule = tiny_unet_and_schedule()
    plain = generate(model, schedule, 3, steps=4, batch_size=2)
    ema = torch.optim.swa_utils.AveragedModel(model)
    ema.train()
    seen = []
    wrapped = generate(ema, schedule, 3, steps=4, batch_size=2, on_step=lambda batch, step: seen.append((batch, step.index, step.t)))
    torch.testing.assert_close(wrapped, plain)
    assert ema.training and unwrap(ema) is ema.module
    assert seen == [(batch, i, t) for batch in (range(0, 2), range(2, 3)) for i, t in enumerate(timestep_sequence(100, 4))]


def test_generate_feeds_channels_last_models_channels_last_inputs_and_autocasts():
    model, schedule = tiny_unet_and_schedule()
    reference = generate(model, schedule, 4, steps=5, batch_size=4)
    model = model.to(memory_format=torch.channels_last)
    formats = []
    model.register_forward_pre_hook(lambda _, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(generate(model, schedule, 4, steps=5, batch_size=4), reference, atol=1e-4, rtol=0)
    assert formats == [True] * 5
    low = generate(model, schedule, 4, steps=5, batch_size=4, autocast_dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and 0 < (low - reference).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++"])
def test_generate_on_cuda_is_independent_of_batch_size_and_autocasts(sampler, exact_fp32):
    model, schedule = tiny_unet_and_schedule()
    model = model.cuda().to(memory_format=torch.channels_last)
    one_batch = generate(model, schedule, 6, sampler=sampler, steps=20, seed=5, batch_size=6)
    batched = generate(model, schedule, 6, sampler=sampler, steps=20, seed=5, batch_size=4)
    assert one_batch.device.type == "cpu"
    torch.testing.assert_close(batched, one_batch, atol=1e-4, rtol=0)
    low = generate(model, schedule, 6, sampler=sampler, steps=20, seed=5, autocast_dtype=torch.bfloat16)
    assert 0 < (low - one_batch).abs().max() < 0.05


def test_generate_from_passes_every_sampling_option(monkeypatch):
    calls = []
    monkeypatch.setattr(diffusion.samplers, "generate", lambda *args, **kwargs: calls.append((args, kwargs)))
    options = SampleConfig(sampler="ddim", steps=7, eta=0.3, ddpm_variance="beta_tilde", clip_denoised=False,
                           num_samples=5, batch_size=2, seed=9, guidance_scale=2.5)
    diffusion.samplers.generate_from("model", "schedule", options, device="cpu")
    ((args, kwargs),) = calls
    assert args == ("model", "schedule", 5)
    assert kwargs == dict(sampler="ddim", steps=7, eta=0.3, seed=9, batch_size=2, clip_denoised=False,
                          ddpm_variance="beta_tilde", guidance_scale=2.5, device="cpu")
