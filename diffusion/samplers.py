"""Reverse-process samplers: DDPM ancestral sampling, DDIM and DPM-Solver++(2M), as an ODE or SDE solver.

Each sampler is a generator over the reverse steps. It draws x_T from a noise source, calls the
network once per step and yields a :class:`ReverseStep` holding the predicted clean image and the
new, less noisy sample, so one code path drives sample grids, animations and notebooks.
:func:`generate` runs a sampler over batches and returns the final images.

Timesteps (code convention of :mod:`diffusion.schedule`: t = 0..T-1)
--------------------------------------------------------------------
A sampler with S steps visits ``timestep_sequence(T, S)``: S integers from T-1 down to 0, strictly
decreasing, spaced quadratically (dense near t = 0). Step i moves from t_i to t_{i+1}; the last step
moves from t = 0 to the data, where alpha_bar = 1 (there the new sample *is* the predicted x0).
With S = T this is every timestep, and the ddpm sampler is exactly Ho et al.'s Algorithm 2; with
S < T every sampler works on the respaced pairs (t_i, t_{i+1}) through alpha_bar alone
(Nichol & Dhariwal 2021, sec. 4).

Guidance
--------
A conditional network (:class:`models.UNet` with labels) is sampled with classifier-free guidance
(Ho & Salimans 2022, eq. 6, in diffusers' convention): eps = eps_uncond + S (eps_cond - eps_uncond),
with x0 recomputed from the guided eps. S = 1 is the conditional model and S = 0 the unconditional
one, each a plain network call; any other S evaluates both halves in ONE call on a doubled batch.

Noise
-----
Sample i draws all its noise (x_T and any per-step noise) from its own generator seeded by
(seed, i), so a sample does not depend on the batch it is generated in, nor on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion.schedule import NoiseSchedule

if TYPE_CHECKING:
    from diffusion.config import SampleConfig

SamplerName = Literal["ddpm", "ddim", "dpm++", "dpm++sde"]
DdpmVariance = Literal["beta", "beta_tilde", "analytic"]
DDPM_VARIANCES: tuple[str, ...] = ("beta", "beta_tilde", "analytic")
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++", "dpm++sde")
NoiseSource = Callable[[], torch.Tensor]  # each call returns the next (B, C, H, W) standard normal draw


@dataclass(frozen=True)
class ReverseStep:
    """One step of the reverse process."""

    index: int  # 0..S-1
    t: int  # the (code) timestep the network saw
    x: torch.Tensor  # the sample after this step: at the next timestep, or the final image after the last step
    x0: torch.Tensor  # the clean image predicted at t (clipped to [-1, 1] when clip_denoised)


def timestep_sequence(timesteps: int, steps: int) -> list[int]:
    """The S timesteps a sampler visits, from T-1 down to 0, strictly decreasing.

    Quadratic spacing (Song et al. sec. D.2, their choice for CIFAR-10): t_i = (T-1) (1 - i/(S-1))^2
    rounded, so steps are dense near t = 0 where the fine detail forms. Where rounding makes
    neighbours collide (S above about sqrt(T)), t_i is raised to t_{i+1} + 1, going up from t = 0;
    since the targets lie below the line (T-1) - i, this never passes T-1 - i, so t_0 = T-1 and
    S = T visits every timestep. S = 1 is a single jump from T-1 to the data.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in 1..{timesteps} (the schedule's T), got {steps}")
    if steps == 1:
        return [timesteps - 1]
    targets = [round((timesteps - 1) * (1 - i / (steps - 1)) ** 2) for i in range(steps)]
    sequence = [0]
    for target in reversed(targets[:-1]):
        sequence.append(max(target, sequence[-1] + 1))
    return sequence[::-1]


def animation_steps(timesteps: Sequence[int], num_frames: int) -> list[int]:
    """Indices of the reverse steps shown by a ``num_frames``-frame animation, dense near t = 0.

    Frame k of K shows the sample after the step whose timestep is nearest to
    t_first (1 - k/(K-1))^2: quadratic in time, because the image forms late in the reverse
    process. The first frame follows the first step, the last frame is the final image; with
    fewer steps than frames a step is shown for several consecutive frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    last = len(timesteps) - 1
    if num_frames == 1:
        return [last]
    targets = [timesteps[0] * (1 - k / (num_frames - 1)) ** 2 for k in range(num_frames)]
    return [min(range(last + 1), key=lambda i: (abs(timesteps[i] - target), -i)) for target in targets]


def stream_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s noise stream: (seed, index) mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0])


class NoiseStreams:
    """Independent standard-normal streams, one per sample, on ``device``.

    Calling it returns the next draw of every stream, stacked to (B, *shape). Sample i's stream
    depends only on (seed, i). The generators live on the device, and each makes its draws
    ``CHUNK`` at a time, so a step costs no host-device traffic and, on average, B / CHUNK
    random-number kernels instead of B (the chunk is fixed: changing it changes the samples).
    """

    CHUNK = 16

    def __init__(self, seed: int, indices: Sequence[int], shape: Sequence[int], device: torch.device | str) -> None:
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(stream_seed(seed, i)) for i in indices]
        self.buffer = torch.empty((0, len(self.generators), *self.shape), device=self.device)
        self.used = 0

    def __call__(self) -> torch.Tensor:
        if self.used == len(self.buffer):
            chunk = (self.CHUNK, *self.shape)
            self.buffer = torch.stack([torch.randn(chunk, generator=g, device=self.device) for g in self.generators], 1)
            self.used = 0
        self.used += 1
        return self.buffer[self.used - 1]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside torch.compile / DistributedDataParallel / AveragedModel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def uses_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are stored channels-last."""
    return any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
    )


Denoiser = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def make_denoiser(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    clip_denoised: bool = True,
    autocast_dtype: torch.dtype | None = None,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> Denoiser:
    """The network as the samplers see it: (x_t, t) -> (predicted x0, predicted eps) in the dtype of x_t.

    Any objective (eps, x0, v) is converted by ``schedule.predict_x0_eps``; with ``labels`` (one
    per sample of the batch) the eps of the conditional and the unconditional prediction are mixed
    by ``guidance_scale`` (see Guidance above) and x0 is recomputed from the mix. With
    ``clip_denoised`` x0 is clipped to [-1, 1] and eps recomputed from the clipped x0 (eq. 4 solved
    for eps), so every sampler's update uses the clipped prediction. The model is called under
    ``autocast_dtype`` (None: full precision) and with channels-last inputs when its weights are
    channels-last.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module  # no gradient synchronisation needed for sampling
    channels_last = uses_channels_last(model)
    if labels is not None and guidance_scale == 0:
        labels = unwrap(model).null_labels(len(labels), labels.device)  # the unconditional model, exactly
    guided = labels is not None and guidance_scale not in (0, 1)
    if guided:
        assert labels is not None
        both_labels = torch.cat([labels, unwrap(model).null_labels(len(labels), labels.device)])

    def network(x: torch.Tensor, t_batch: torch.Tensor) -> torch.Tensor:
        net_input = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if guided:
                output = model(torch.cat([net_input, net_input]), torch.cat([t_batch, t_batch]), both_labels)
            else:
                output = model(net_input, t_batch) if labels is None else model(net_input, t_batch, labels)
        # A copy: a CUDA-graph replay of a compiled model reuses its output buffer at the next call.
        return output.to(x.dtype, copy=True)

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = network(x, t_batch)
        if guided:
            cond, uncond = output.chunk(2)
            _, eps_cond = schedule.predict_x0_eps(cond, x, t_batch)
            _, eps_uncond = schedule.predict_x0_eps(uncond, x, t_batch)
            eps = torch.lerp(eps_uncond, eps_cond, guidance_scale)  # eps_u + S (eps_c - eps_u)
            x0 = schedule.x0_from_eps(x, t_batch, eps)
        else:
            x0, eps = schedule.predict_x0_eps(output, x, t_batch)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = schedule.eps_from_x0(x, t_batch, x0)
        return x0, eps

    return denoise


def _step_pairs(alpha_bar: list[float], timesteps: list[int]) -> Iterator[tuple[int, int, float, float]]:
    """(index, t, alpha_bar_t, alpha_bar_s) for each step t -> s; s after the last step is the data."""
    for i, t in enumerate(timesteps):
        ab_next = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        yield i, t, alpha_bar[t], ab_next


@dataclass(frozen=True)
class Reference:
    """Training images (N, C, H, W) in [-1, 1] and, for a conditional model, their labels: the
    Monte-Carlo set from which Analytic-DPM estimates its variances (:func:`estimate_eps_moments`)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    @classmethod
    def draw(cls, images: np.ndarray, labels: np.ndarray | None, count: int, seed: int) -> Reference:
        """``count`` images (without replacement, all if fewer) drawn by ``seed`` from a uint8
        (N, H, W, C) dataset, with their labels where given."""
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
        x = torch.from_numpy(np.asarray(images[chosen])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return cls(x, torch.from_numpy(np.asarray(labels[chosen])) if labels is not None else None)


def analytic_variance(ab_t: float, ab_s: float, eps_moment: float) -> float:
    """Analytic-DPM's optimal variance of the DDPM step t -> s (Bao et al. 2022, Theorem 1 with
    lambda^2 = beta_tilde, the DDPM posterior variance):

        sigma^2 = beta_tilde + c^2 (1 - alpha_bar_t) / alpha_bar_t (1 - Gamma_t),

    c = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) the x0 coefficient of mu_tilde (Ho et al. eq. 7)
    and Gamma_t = E ||eps(x_t, t)||^2 / d, so that the second term is c^2 times the mean posterior
    variance of a pixel of x0. That variance is clipped to [0, 1] (a pixel in [-1, 1] varies by
    at most 1: their Theorem 2), which also absorbs Monte-Carlo error in Gamma_t.
    """
    beta = 1.0 - ab_t / ab_s
    beta_tilde = beta * (1 - ab_s) / (1 - ab_t)
    c = math.sqrt(ab_s) * beta / (1 - ab_t)
    posterior = min(max((1 - ab_t) / ab_t * (1 - eps_moment), 0.0), 1.0)
    return beta_tilde + c * c * posterior


@torch.inference_mode()
def ddpm_steps(
    denoise: Denoiser,
    alpha_bar: list[float],
    timesteps: list[int],
    noise: NoiseSource,
    variance: DdpmVariance = "beta",
    eps_moments: Sequence[float] | None = None,
) -> Iterator[ReverseStep]:
    """Ho et al. Algorithm 2: x_s = mu_tilde(x_t, x0_hat) + sigma z, z = 0 at the last step.

    For a step t -> s, with beta = 1 - alpha_bar_t / alpha_bar_s (beta_t itself when s = t-1),
    Ho et al. eq. 7 gives the posterior mean
        mu_tilde = sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) x0 + sqrt(1 - beta) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t
    and sigma^2 is beta ("beta", the paper's choice for CIFAR-10 and CelebA),
    beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta ("beta_tilde"; sec. 3.2), or
    Analytic-DPM's estimate ("analytic", :func:`analytic_variance`, with ``eps_moments[i]`` the
    Gamma of step i), which lies between beta_tilde and the variance of data that fill [-1, 1].
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown ddpm variance {variance!r}: expected one of {', '.join(DDPM_VARIANCES)}")
    if variance == "analytic" and (eps_moments is None or len(eps_moments) != len(timesteps)):
        raise ValueError("the analytic ddpm variance needs one eps moment per step (eps_moments)")
    x = noise()
    for i, t, ab_t, ab_s in _step_pairs(alpha_bar, timesteps):
        x0, _ = denoise(x, t)
        beta = 1.0 - ab_t / ab_s
        x = (math.sqrt(ab_s) * beta / (1 - ab_t)) * x0 + (math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t)) * x
        if ab_s < 1.0:  # not the last step
            if variance == "analytic":
                var = analytic_variance(ab_t, ab_s, eps_moments[i])
            else:
                var = beta if variance == "beta" else beta * (1 - ab_s) / (1 - ab_t)
            x = x + math.sqrt(var) * noise()
        yield ReverseStep(i, t, x, x0)


@torch.inference_mode()
def estimate_eps_moments(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    options: SampleConfig,
    reference: Reference,
    autocast_dtype: torch.dtype | None = None,
) -> list[float]:
    """Gamma_t = E ||eps(x_t, t)||^2 / d at each timestep of ``options.steps``, the Monte-Carlo
    estimate of Bao et al. 2022 (eq. 8, in eps form): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 -
    alpha_bar_t) z for every reference image x0 (with its label, guided by
    ``options.guidance_scale`` as the samples are), z drawn from ``options.seed``, in batches of
    ``options.batch_size``. The network's own eps is used, unclipped: the score estimate the
    theorem needs.
    """
    device = model_device(model)
    schedule = schedule_on(schedule, device)
    generator = torch.Generator(device).manual_seed(options.seed)
    was_training = model.training
    model.eval()
    batches = []  # (x0, its denoiser), made once for every timestep
    for start in range(0, len(reference.images), options.batch_size):
        x0 = reference.images[start : start + options.batch_size].to(device)
        labels = reference.labels[start : start + len(x0)].to(device) if reference.labels is not None else None
        batches.append((x0, make_denoiser(model, schedule, False, autocast_dtype, labels, options.guidance_scale)))
    moments = []
    try:
        for t in timestep_sequence(schedule.timesteps, options.steps):
            ab = float(schedule.alpha_bar[t])
            total = 0.0
            for x0, denoise in batches:
                z = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
                _, eps = denoise(math.sqrt(ab) * x0 + math.sqrt(1 - ab) * z, t)
                total += eps.double().square().sum().item()
            moments.append(total / reference.images.numel())
    finally:
        model.train(was_training)
    return moments


@torch.inference_mode()
def ddim_steps(
    denoise: Denoiser,
    alpha_bar: list[float],
    timesteps: list[int],
    noise: NoiseSource,
    eta: float = 0.0,
) -> Iterator[ReverseStep]:
    """Song et al. eq. 12: x_s = sqrt(alpha_bar_s) x0 + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z.

    sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)
    (Song et al. eq. 16): eta = 0 is deterministic given x_T, eta = 1 is the DDPM posterior with
    variance beta_tilde. Noise is drawn only where sigma > 0. ``eta`` in [0, 1] is checked with the
    other sampling options by :func:`diffusion.config.check_sampling`.
    """
    x = noise()
    for i, t, ab_t, ab_s in _step_pairs(alpha_bar, timesteps):
        x0, eps = denoise(x, t)
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        x = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * noise()
        yield ReverseStep(i, t, x, x0)


@torch.inference_mode()
def dpm_solver_pp_2m_steps(
    denoise: Denoiser,
    alpha_bar: list[float],
    timesteps: list[int],
    noise: NoiseSource,
    stochastic: bool = False,
) -> Iterator[ReverseStep]:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095), data prediction: Algorithm 2, or with
    ``stochastic`` its SDE counterpart from the same paper, SDE-DPM-Solver++(2M).

    With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t / sigma_t)
    and h = lambda_s - lambda_t, a step t -> s is
        ODE: x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,
        SDE: x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D + sigma_s sqrt(1 - e^{-2h}) z,
    with D = x0_t at the first step and D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev after it, r = h_prev / h.
    The SDE's first-order step (D = x0_t) is exactly the DDPM posterior with variance beta_tilde, so
    it is DDPM sampling with a second-order correction of the x0 term. The last step goes to
    sigma = 0 (h = inf), where both updates are x_s = x0_t.
    """
    x = noise()
    h_prev, x0_prev = 0.0, None
    for i, t, ab_t, ab_s in _step_pairs(alpha_bar, timesteps):
        x0, _ = denoise(x, t)
        if ab_s >= 1.0:
            x = x0
        else:
            h = 0.5 * (math.log(ab_s / (1 - ab_s)) - math.log(ab_t / (1 - ab_t)))
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            sigma_ratio = math.sqrt((1 - ab_s) / (1 - ab_t))
            if stochastic:
                x = (sigma_ratio * math.exp(-h)) * x - math.sqrt(ab_s) * math.expm1(-2 * h) * d
                x = x + math.sqrt((1 - ab_s) * -math.expm1(-2 * h)) * noise()
            else:
                x = sigma_ratio * x - math.sqrt(ab_s) * math.expm1(-h) * d
            h_prev, x0_prev = h, x0
        yield ReverseStep(i, t, x, x0)


def reverse_process(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    noise: NoiseSource,
    *,
    sampler: SamplerName = "dpm++",
    steps: int = 20,
    eta: float = 0.0,
    clip_denoised: bool = True,
    ddpm_variance: DdpmVariance = "beta",
    autocast_dtype: torch.dtype | None = None,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    eps_moments: Sequence[float] | None = None,
) -> Iterator[ReverseStep]:
    """The reverse steps of ``sampler`` with S = ``steps`` network calls, starting from x_T = noise().

    ``model`` should be in eval mode and on the device of ``noise``; ``schedule`` on any device.
    A conditional model gets ``labels`` (one per sample) and ``guidance_scale`` (:func:`make_denoiser`).
    The analytic ddpm variance needs ``eps_moments`` (:func:`estimate_eps_moments` of the same steps).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    timesteps = timestep_sequence(schedule.timesteps, steps)
    alpha_bar = schedule.alpha_bar.tolist()
    denoise = make_denoiser(model, schedule, clip_denoised, autocast_dtype, labels, guidance_scale)
    if sampler == "ddpm":
        return ddpm_steps(denoise, alpha_bar, timesteps, noise, ddpm_variance, eps_moments)
    if sampler == "ddim":
        return ddim_steps(denoise, alpha_bar, timesteps, noise, eta)
    return dpm_solver_pp_2m_steps(denoise, alpha_bar, timesteps, noise, stochastic=sampler == "dpm++sde")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(unwrap(model).parameters()).device


def generate(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    num_samples: int,
    *,
    sampler: SamplerName = "dpm++",
    steps: int = 20,
    eta: float = 0.0,
    seed: int = 0,
    first: int = 0,
    batch_size: int = 64,
    clip_denoised: bool = True,
    ddpm_variance: DdpmVariance = "beta",
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    on_step: Callable[[range, ReverseStep], None] | None = None,
    labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    eps_moments: Sequence[float] | None = None,
) -> torch.Tensor:
    """Generate ``num_samples`` images (N, C, H, W) on the CPU, in [-1, 1] when ``clip_denoised``.

    The shape comes from the network's ``in_channels`` and ``image_size``; ``device`` defaults to
    the model's. Sample i is generated from stream (seed, first + i) whatever ``batch_size`` is, so
    a process can draw its share of a larger set (``first``: the index of its first sample).
    ``on_step(sample_indices, step)`` is called after every reverse step of every batch (for
    animations). A conditional model gets ``labels`` (N,) or (N, A), sample i conditioned on
    ``labels[i]``, guided by ``guidance_scale`` (None labels: unconditioned). The ddpm sampler with
    the analytic variance needs ``eps_moments`` (:func:`estimate_eps_moments`). The model is put in eval
    mode while sampling and restored afterwards.
    """
    if num_samples < 1 or batch_size < 1 or first < 0:
        raise ValueError(f"num_samples and batch_size must be positive and first >= 0, got {num_samples}, {batch_size}, {first}")
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"expected one label per sample ({num_samples}), got {len(labels)}")
    net = unwrap(model)
    shape = (net.in_channels, net.image_size, net.image_size)
    device = torch.device(device) if device is not None else model_device(model)
    schedule = schedule_on(schedule, device)
    num_batches = math.ceil(num_samples / batch_size)
    bar = tqdm(total=num_batches * steps, desc=f"{sampler} {steps} steps", unit="step", disable=not progress)
    was_training = model.training
    model.eval()
    images = torch.empty((num_samples, *shape))
    try:
        for start in range(0, num_samples, batch_size):
            batch = range(start, min(start + batch_size, num_samples))
            noise = NoiseStreams(seed, range(first + batch.start, first + batch.stop), shape, device)
            for step in reverse_process(
                model, schedule, noise, sampler=sampler, steps=steps, eta=eta,
                clip_denoised=clip_denoised, ddpm_variance=ddpm_variance, autocast_dtype=autocast_dtype,
                labels=labels[batch.start : batch.stop].to(device) if labels is not None else None,
                guidance_scale=guidance_scale, eps_moments=eps_moments,
            ):
                if on_step is not None:
                    on_step(batch, step)
                bar.update()
            images[batch.start : batch.stop] = step.x.float().cpu()
    finally:
        model.train(was_training)
        bar.close()
    return images


def generate_from(model: torch.nn.Module, schedule: NoiseSchedule, options: SampleConfig, **kwargs: Any) -> torch.Tensor:
    """:func:`generate` with the options of a config's ``sample`` section (``num_samples``,
    sampler, steps, eta, seed, batch size, clipping, DDPM variance, guidance scale); ``kwargs``
    (e.g. ``labels``) go to it as they are."""
    return generate(
        model, schedule, options.num_samples, sampler=options.sampler, steps=options.steps, eta=options.eta,
        seed=options.seed, batch_size=options.batch_size, clip_denoised=options.clip_denoised,
        ddpm_variance=options.ddpm_variance, guidance_scale=options.guidance_scale, **kwargs,
    )


def schedule_on(schedule: NoiseSchedule, device: torch.device) -> NoiseSchedule:
    """``schedule`` with its tables on ``device`` (a moved copy; the caller's schedule is untouched)."""
    if schedule.alpha_bar.device == device:
        return schedule
    copy = NoiseSchedule.__new__(NoiseSchedule)
    copy.__dict__.update(vars(schedule))
    return copy.to(device)
