"""The DDPM forward process: the noise schedule and everything derived from it.

Index convention (the only place it is written down)
----------------------------------------------------
Code timesteps are ``t = 0, 1, ..., T-1``; code ``t`` is the paper's step ``t + 1``. So

* ``betas[t]`` is the paper's beta_{t+1}; ``alphas[t] = 1 - betas[t]``;
* ``alpha_bar[t] = prod_{s <= t} alphas[s]`` is the paper's alpha_bar_{t+1}, and
  ``x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)``;
* ``alpha_bar_prev[t]`` is alpha_bar of the step before, with ``alpha_bar_prev[0] = 1``
  (the "x_{-1}" of code t = 0 is the data x_0 itself);
* the posterior q(x_{t-1} | x_t, x_0) at code ``t = 0`` is the point mass at x_0: its variance
  ``posterior_variance[0]`` is 0, and its log is clipped to ``log(posterior_variance[1])``
  (as in Ho et al.'s code) so that it stays finite.

All tables are computed in float64 and cast to the working dtype when gathered.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Objective = Literal["eps", "x0", "v"]


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. sec. 4: betas linear in t; the end points are scaled by 1000/T (Nichol & Dhariwal)."""
    scale = 1000.0 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values ``table[t]`` shaped (B, 1, 1, ...) to broadcast against ``like``."""
    values = table.to(t.device)[t].to(like.dtype)  # a no-op move once NoiseSchedule.to(device) ran
    return values.reshape(t.shape[0], *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """The quantities of a T-step DDPM forward process and the operations built on them."""

    def __init__(
        self,
        timesteps: int = 1000,
        schedule: Literal["linear", "cosine"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        objective: Objective = "eps",
        min_snr_gamma: float = 0.0,
    ) -> None:
        if schedule == "linear":
            betas = linear_betas(timesteps, beta_start, beta_end)
        elif schedule == "cosine":
            betas = cosine_betas(timesteps)
        else:
            raise ValueError(f"unknown schedule {schedule!r}: expected 'linear' or 'cosine'")
        if objective not in ("eps", "x0", "v"):
            raise ValueError(f"unknown objective {objective!r}: expected 'eps', 'x0' or 'v'")
        if min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be >= 0 (0: off), got {min_snr_gamma}")
        self.timesteps = timesteps
        self.objective = objective
        self.min_snr_gamma = min_snr_gamma
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        self.snr = self.alpha_bar / (1.0 - self.alpha_bar)  # signal-to-noise ratio of x_t (Kingma et al. 2021 eq. 1)
        self.loss_weight = self._loss_weights()
        # Ho et al. eq. 7: beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t.
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_log_variance = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        # Ho et al. eq. 7: mu_tilde = c0 * x_0 + ct * x_t.
        self.posterior_mean_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_mean_coef_xt = (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bar)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """Move every table to ``device`` (float64 kept, except on MPS which lacks it); in place."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device, dtype))
        return self

    @classmethod
    def from_config(cls, cfg) -> NoiseSchedule:
        """Build from a :class:`diffusion.config.DiffusionConfig`."""
        return cls(cfg.timesteps, cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.objective, cfg.min_snr_gamma)

    def _loss_weights(self) -> torch.Tensor:
        """Per-timestep weights of the squared error: 1, or with gamma > 0 Hang et al. 2023's
        min-SNR-gamma weighting (their eq. 10, w_t = min(SNR_t, gamma) on the x0 error) expressed
        for this objective's target: divided by SNR_t for eps (||eps err||^2 = SNR ||x0 err||^2)
        and by SNR_t + 1 for v (||v err||^2 = (SNR + 1) ||x0 err||^2)."""
        if self.min_snr_gamma == 0:
            return torch.ones_like(self.snr)
        clipped = self.snr.clamp(max=self.min_snr_gamma)
        return {"eps": clipped / self.snr, "x0": clipped, "v": clipped / (self.snr + 1)}[self.objective]

    # Forward process ------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Ho et al. eq. 4: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        return gather(self.sqrt_alpha_bar, t, x0) * x0 + gather(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ho et al. eqs. 6-7: mean, variance and log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = gather(self.posterior_mean_coef_x0, t, xt) * x0 + gather(self.posterior_mean_coef_xt, t, xt) * xt
        return mean, gather(self.posterior_variance, t, xt), gather(self.posterior_log_variance, t, xt)

    # Conversions between parameterisations -------------------------------------------------

    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Inverse of eq. 4: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (xt - gather(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / gather(self.sqrt_alpha_bar, t, xt)

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Eq. 4 solved for eps: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)."""
        return (xt - gather(self.sqrt_alpha_bar, t, xt) * x0) / gather(self.sqrt_one_minus_alpha_bar, t, xt)

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Salimans & Ho (2022) sec. 4: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
        return gather(self.sqrt_alpha_bar, t, x0) * noise - gather(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def predict_x0_eps(
        self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) implied by the network output under this schedule's objective."""
        if self.objective == "eps":
            return self.x0_from_eps(xt, t, model_output), model_output
        if self.objective == "x0":
            return model_output, self.eps_from_x0(xt, t, model_output)
        # v-objective: x_0 = sqrt(ab) x_t - sqrt(1 - ab) v,  eps = sqrt(1 - ab) x_t + sqrt(ab) v.
        a, b = gather(self.sqrt_alpha_bar, t, xt), gather(self.sqrt_one_minus_alpha_bar, t, xt)
        return a * xt - b * model_output, b * xt + a * model_output

    # Training ------------------------------------------------------------------------------

    def sample_timesteps(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        """t uniform in 0..T-1 (Ho et al. Algorithm 1, line 3)."""
        return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)

    def training_loss(
        self,
        model: torch.nn.Module,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean-squared error of the network's prediction of the objective's target, each sample's
        error weighted by ``loss_weight[t]`` (all 1 unless min-SNR-gamma is on).

        ``eps``: L_simple, Ho et al. eq. 14; ``x0``: the clean image; ``v``: Salimans & Ho's v.
        ``labels`` (a conditional model's, some already dropped to the null token) go to the network.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        if self.objective == "eps":
            target = noise
        elif self.objective == "x0":
            target = x0
        else:
            target = self.v_target(x0, t, noise)
        prediction = model(xt, t) if labels is None else model(xt, t, labels)
        if self.min_snr_gamma == 0:
            return F.mse_loss(prediction.float(), target.float())
        error = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
        return (gather(self.loss_weight, t, error).float() * error).mean()
