"""Flow-GRPO-style stochastic sampler used by Flow-OPD.

The deterministic ODE ``dx = v dt`` (conventions in :mod:`danceopd.core.flow`) is replaced by the SDE
with the same marginals

    dx = [v + sigma_t^2 / (2 t) * (x + (1 - t) v)] dt + sigma_t dW,     sigma_t = eta * sqrt(t / (1 - t)),

(the bracket uses the score of ``x_t`` implied by ``v``: ``score = -(x + (1 - t) v) / t``). One
Euler-Maruyama step from ``t`` to ``t_next < t`` is the Gaussian transition

    x_{t_next} ~ N(mean, std^2 I),
    mean = x_t + [v + sigma_t^2 / (2 t) * (x_t + (1 - t) v)] * (t_next - t),
    std  = sigma_t * sqrt(t - t_next).

With ``eta = 0`` the mean is exactly the Euler step and ``std = 0``.

The ``1 / (1 - t)`` factor diverges at ``t = 1`` (the first state of every rollout). For the division
only, ``1 - t`` is floored at ``max(t - t_next, 1e-3)``: at ``t = 1`` this is Flow-GRPO's rule (it uses
the next grid time in the denominator), and it keeps ``sigma_t^2 * (t - t_next)`` bounded so the first
step cannot blow up; for ``t < 1`` on ordinary grids ``1 - t >= t - t_next`` and nothing changes.
The current time must be ``t > 0`` (the drift divides by ``t``); ``t_next`` may be 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .flow import TimeLike, _compute_dtype, expand_time

MIN_ONE_MINUS_T = 1e-3
"""Lower bound on ``1 - t`` in ``sigma_t``'s denominator (on top of the step-size floor)."""


def sde_sigma(t: Tensor, t_next: Tensor, eta: float) -> Tensor:
    """Noise level ``sigma_t = eta * sqrt(t / max(1 - t, t - t_next, 1e-3))`` (broadcasts ``t``/``t_next``)."""
    floor = torch.clamp(t - t_next, min=MIN_ONE_MINUS_T)
    one_minus_t = torch.maximum(1 - t, floor)
    return eta * torch.sqrt(t / one_minus_t)


def sde_transition(
    x_t: Tensor, v: Tensor, t: TimeLike, t_next: TimeLike, eta: float
) -> tuple[Tensor, Tensor]:
    """Mean and std of the Gaussian transition ``p(x_{t_next} | x_t)`` of the SDE sampler.

    Args:
        x_t: state ``[B, ...]`` at time ``t``.
        v: velocity at ``(x_t, t)`` ``[B, ...]`` (student or teacher; gradients flow through it).
        t: current time (``> 0``), scalar or ``[B]``.
        t_next: next time (``<= t``), scalar or ``[B]``.
        eta: noise level (``>= 0``); ``0`` gives the deterministic Euler step.

    Returns:
        ``mean`` ``[B, ...]`` and ``std`` ``[B, 1, ..., 1]`` (broadcastable against ``x_t``), both in the
        compute dtype (promotion of ``x_t``, ``v`` and the times).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    t_e = expand_time(t, x_t)
    t_next_e = expand_time(t_next, x_t)
    dtype = _compute_dtype(x_t, v, t_e, t_next_e)
    t_e, t_next_e = t_e.to(dtype), t_next_e.to(dtype)
    x, v = x_t.to(dtype), v.to(dtype)
    dt = t_next_e - t_e
    sigma = sde_sigma(t_e, t_next_e, eta)
    drift = v + sigma**2 / (2 * t_e) * (x + (1 - t_e) * v)
    mean = x + drift * dt
    std = sigma * torch.sqrt(torch.clamp(-dt, min=0.0))
    return mean, std


def sde_step(
    x_t: Tensor,
    v: Tensor,
    t: TimeLike,
    t_next: TimeLike,
    eta: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``x_next ~ N(mean, std^2 I)`` for the transition of :func:`sde_transition`.

    Args:
        x_t, v, t, t_next, eta: as in :func:`sde_transition`.
        generator: torch.Generator on ``x_t.device`` for the Gaussian draw.

    Returns:
        ``(x_next [B, ...], mean [B, ...], std [B, 1, ..., 1])``; ``x_next`` is in ``x_t``'s dtype.
    """
    mean, std = sde_transition(x_t, v, t, t_next, eta)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    x_next = (mean + std * eps).to(x_t.dtype)
    return x_next, mean, std


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """Log-density of ``N(mean, std^2 I)`` at ``x``, summed over all non-batch dims (constant included).

    ``log p = sum_d [ -(x_d - mean_d)^2 / (2 std^2) - log std - log(2 pi) / 2 ]``.

    Args:
        x: sample ``[B, ...]``.
        mean: mean ``[B, ...]``.
        std: standard deviation, broadcastable to ``x`` (e.g. ``[B, 1, ..., 1]`` or a float); must be > 0,
            so use ``eta > 0`` when log-probabilities are needed.

    Returns:
        ``Tensor[B]``.
    """
    std = torch.as_tensor(std, device=x.device)
    dtype = _compute_dtype(x, mean, std) if torch.is_floating_point(std) else _compute_dtype(x, mean)
    x, mean, std = x.to(dtype), mean.to(dtype), std.to(dtype)
    log_p = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_p = log_p.expand(torch.broadcast_shapes(log_p.shape, x.shape))
    return log_p.reshape(x.shape[0], -1).sum(dim=1)
