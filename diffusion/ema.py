"""Exponential moving average (EMA) of a model's weights, with a warmup of the decay.

After ``n`` updates the next update is ``ema <- d_n * ema + (1 - d_n) * weights`` with

    d_n = min(decay, (1 + n) / (10 + n)),

the warmup of TensorFlow's ``ExponentialMovingAverage(num_updates=n)``: d_0 = 0.1, d_10 = 0.55,
d_100 = 0.92, d_1000 = 0.991, so the average follows the fast-moving early weights and early EMA
samples are not noise, and only after ~(10 d - 1) / (1 - d) updates does the full ``decay`` apply.

``torch.optim.swa_utils.AveragedModel`` keeps its update count on the device and reads it back
before every update (a host sync on CUDA each step), and its state dict carries a ``module.``
prefix; this class keeps the count on the host and its ``state_dict`` is a plain model state
dict, loadable straight into the network class.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the update that follows ``updates`` earlier ones (module docstring)."""
    return min(decay, (1 + updates) / (10 + updates))


class EMA:
    """An EMA copy of ``model`` (parameters and floating-point buffers; other buffers copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._paired: nn.Module | None = None  # the model whose tensors self._pairs holds

    def _tensor_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """(EMA float tensors, ``model``'s float tensors, (EMA, model) other buffers), collected
        once per model: building two state dicts costs milliseconds of host time every step, and
        both models' tensors are updated in place (optimizer steps, ``load_state_dict``)."""
        if self._paired is not model:
            averaged, current, copied = [], [], []
            for mine, theirs in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
                if mine.is_floating_point():
                    averaged.append(mine)
                    current.append(theirs)
                else:
                    copied.append((mine, theirs))
            self._pairs, self._paired = (averaged, current, copied), model
        return self._pairs

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay(self.decay, self.updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, current, copied = self._tensor_pairs(model)
        for mine, theirs in copied:
            mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay)  # ema + (1 - d) (w - ema)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, as a plain state dict of the model class."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(state)
        self.updates = updates


class PowerEMA(EMA):
    """The power-function EMA of Karras et al. 2024 (eq. 2): the ``n``-th update (n = 1, 2, ...)
    has decay ``(1 - 1/n)^(gamma + 1)``, so after ``t`` updates the average weighs the ``tau``-th
    weights by ``(tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1)``: the density
    ``(gamma + 1) tau^gamma / t^(gamma+1)`` on [0, t], integrated over each update's unit interval.
    Its width relative to t is ``sigma_rel`` (:func:`diffusion.posthoc_ema.gamma_from_sigma_rel`),
    whatever the run's length: snapshots of two such averages let :mod:`diffusion.posthoc_ema`
    rebuild an average of any other width after training."""

    def __init__(self, model: nn.Module, gamma: float) -> None:
        super().__init__(model, decay=0.0)
        self.gamma = gamma

    @property
    def current_decay(self) -> float:
        return (1.0 - 1.0 / (self.updates + 1)) ** (self.gamma + 1.0)
