"""Rectified-flow conventions, time grids and the deterministic Euler ODE.

Conventions used everywhere in :mod:`danceopd.core`:

* Interpolation path: ``x_t = (1 - t) * x_0 + t * noise`` with ``t`` in ``[0, 1]``;
  ``t = 1`` is pure noise, ``t = 0`` is clean data.
* Velocity target: ``v = noise - x_0`` (so ``d x_t / d t = v``), hence ``x_0 = x_t - t * v``.
* A *velocity field* is any callable ``field(x_t: Tensor[B, ...], t: Tensor[B]) -> Tensor[B, ...]``.
  Conditioning (prompt, source image, guidance scale, ...) is bound by the caller in a closure.
* Sampling grid: ``timesteps(n, shift)`` is a ``Tensor[n + 1]`` that descends from exactly 1.0 to
  exactly 0.0; the SD3 time shift ``t' = shift * t / (1 + (shift - 1) * t)`` is applied to a uniform grid.
* Euler step from ``t`` to ``t_next < t``: ``x_next = x_t + (t_next - t) * v``.
* A rollout with ``n`` Euler steps visits the states ``x^(0) = noise`` at ``t_0 = 1``, ...,
  ``x^(n)`` at ``t_n = 0``.

Times may be given as Python floats, 0-dim tensors or per-sample ``Tensor[B]``; they broadcast over
the non-batch dimensions of the state. Arithmetic on times is done in (at least) the precision of the
time tensor, so a ``bfloat16`` state never rounds its step size; the result is cast back to the state's
dtype.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor


class VelocityField(Protocol):
    """Any callable ``field(x_t: Tensor[B, ...], t: Tensor[B]) -> v: Tensor[B, ...]``."""

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor: ...


TimeLike = float | Tensor


def batch_time(t: TimeLike, x: Tensor) -> Tensor:
    """Turn a time (float, 0-dim tensor or ``Tensor[B]``) into a floating ``Tensor[B]`` on ``x.device``.

    Args:
        t: scalar time or per-sample times ``[B]``.
        x: reference state ``[B, ...]`` (only its batch size and device are used).

    Returns:
        ``Tensor[B]``. A floating tensor keeps its dtype; a Python number becomes float64 for a float64
        ``x`` and float32 otherwise; integer tensors become float32.
    """
    if not isinstance(t, Tensor):  # Python number: keep full precision for float64 states
        t = torch.tensor(
            t, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32
        )
    t = t.to(device=x.device)
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"time must be a scalar or have shape [B]=[{x.shape[0]}], got {tuple(t.shape)}")
    return t


def expand_time(t: TimeLike, x: Tensor) -> Tensor:
    """Reshape a time to ``[B, 1, ..., 1]`` so it broadcasts against ``x: [B, ...]`` (dtype kept)."""
    t_b = batch_time(t, x)
    return t_b.reshape(-1, *([1] * (x.dim() - 1)))


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def interpolate(x_0: Tensor, noise: Tensor, t: TimeLike) -> Tensor:
    """Point on the straight path: ``x_t = (1 - t) * x_0 + t * noise``.

    Args:
        x_0: clean data ``[B, ...]``.
        noise: Gaussian noise ``[B, ...]``.
        t: time, scalar or ``[B]``.

    Returns:
        ``x_t`` ``[B, ...]`` in ``x_0``'s dtype.
    """
    t_e = expand_time(t, x_0)
    dtype = _compute_dtype(x_0, noise, t_e)
    t_e = t_e.to(dtype)
    return ((1 - t_e) * x_0.to(dtype) + t_e * noise.to(dtype)).to(x_0.dtype)


def velocity_target(x_0: Tensor, noise: Tensor) -> Tensor:
    """Conditional flow-matching target ``v = noise - x_0`` (``[B, ...]``)."""
    return noise - x_0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: TimeLike) -> Tensor:
    """Clean-data prediction implied by a velocity: ``x_0 = x_t - t * v`` (``[B, ...]``)."""
    t_e = expand_time(t, x_t)
    dtype = _compute_dtype(x_t, v, t_e)
    return (x_t.to(dtype) - t_e.to(dtype) * v.to(dtype)).to(x_t.dtype)


def shift_time(t: Tensor, shift: float = 1.0) -> Tensor:
    """SD3 time shift ``t' = shift * t / (1 + (shift - 1) * t)``; maps 0->0, 1->1, monotone for shift>0."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def timesteps(
    n_steps: int,
    shift: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sampling grid ``[n_steps + 1]`` descending from exactly 1.0 to exactly 0.0.

    A uniform grid ``linspace(1, 0, n_steps + 1)`` is passed through :func:`shift_time` (computed in
    float64); ``shift > 1`` spends more steps near the noise end. The endpoints are pinned exactly.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    grid = shift_time(torch.linspace(1.0, 0.0, n_steps + 1, dtype=torch.float64), shift)
    grid[0] = 1.0
    grid[-1] = 0.0
    return grid.to(device=device, dtype=dtype)


def euler_step(field: VelocityField, x_t: Tensor, t: TimeLike, t_next: TimeLike) -> Tensor:
    """One Euler step of the ODE ``dx/dt = field(x, t)`` from ``t`` to ``t_next``.

    Args:
        field: velocity field, called once as ``field(x_t, t[B])``.
        x_t: state ``[B, ...]`` at time ``t``.
        t: current time, scalar or ``[B]``.
        t_next: next time (``t_next < t`` when integrating towards data), scalar or ``[B]``.

    Returns:
        ``x_next = x_t + (t_next - t) * v`` ``[B, ...]`` in ``x_t``'s dtype. Gradients flow if the caller
        does not disable them.
    """
    t_b = batch_time(t, x_t)
    v = field(x_t, t_b)
    return euler_update(x_t, v, t_b, t_next)


def euler_update(x_t: Tensor, v: Tensor, t: TimeLike, t_next: TimeLike) -> Tensor:
    """The Euler update for an already evaluated velocity ``v``: ``x_t + (t_next - t) * v``."""
    t_e = expand_time(t, x_t)
    t_next_e = expand_time(t_next, x_t)
    dtype = _compute_dtype(x_t, v, t_e, t_next_e)
    dt = t_next_e.to(dtype) - t_e.to(dtype)
    return (x_t.to(dtype) + dt * v.to(dtype)).to(x_t.dtype)


def sample_t(
    batch: int,
    generator: torch.Generator | None = None,
    dist: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times ``t: Tensor[batch]`` (float32) in ``(0, 1)``.

    Args:
        batch: number of times.
        generator: torch.Generator for reproducibility (its device is used when ``device`` is None).
        dist: ``"logit_normal"`` -> ``sigmoid(mean + std * N(0, 1))`` (SD3 default, mass in the middle);
            ``"uniform"`` -> ``U[0, 1)`` (``mean``/``std`` ignored).
        mean, std: logit-normal location and scale.
        device: output device.
    """
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if dist == "logit_normal":
        if std <= 0:
            raise ValueError(f"logit-normal std must be > 0, got {std}")
        z = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(mean + std * z)
    if dist == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"unknown time distribution {dist!r}; expected 'logit_normal' or 'uniform'")


def logit_normal_pdf(t: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Density of the logit-normal distribution at ``t`` in ``(0, 1)`` (for docs and tests)."""
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


@torch.no_grad()
def ode_sample(field: VelocityField, noise: Tensor, timesteps: Tensor) -> Tensor:
    """Integrate the ODE with Euler from ``noise`` at ``timesteps[0]`` to ``timesteps[-1]``.

    Args:
        field: velocity field.
        noise: initial state ``[B, ...]`` (pure noise when ``timesteps[0] == 1``).
        timesteps: descending grid ``[n + 1]`` (see :func:`timesteps`); ``n`` field evaluations.

    Returns:
        Final state ``x_0`` ``[B, ...]`` (no autograd graph).
    """
    if timesteps.dim() != 1 or timesteps.numel() < 2:
        raise ValueError(
            f"timesteps must be a 1-D grid with >= 2 entries, got shape {tuple(timesteps.shape)}"
        )
    timesteps = timesteps.to(noise.device)
    x = noise
    for i in range(timesteps.numel() - 1):
        x = euler_step(field, x, timesteps[i], timesteps[i + 1])
    return x
