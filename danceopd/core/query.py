"""Query-state sampling over the student's own trajectory.

A rollout with ``n`` Euler steps has states ``x^(0) = noise`` at ``t_0 = 1``, ..., ``x^(n)`` at
``t_n = 0``. The *queryable* indices are ``0 .. n-1`` (states with ``t > 0``, where a velocity is
defined). A query position is a number ``u`` in ``[0, 1)`` along the trajectory, mapped to

    index = min(floor(u * n), n - 1),

so ``u -> 0`` is the noise end (index 0) and ``u -> 1`` the clean end (index ``n - 1``).

Biases (density of ``u``, see :func:`query_bias_pdf`):

* ``"low_t"``  : ``Beta(5, 2)``, mean 5/7, mass towards the clean end (low ``t``, late indices);
* ``"mid_t"``  : ``Beta(5, 5)``, mean 1/2;
* ``"high_t"`` : ``Beta(2, 5)``, mean 2/7, mass towards the noise end;
* ``"uniform"``: ``U[0, 1)``;
* ``"stratified"``: ``K`` equal strata ``[j/K, (j+1)/K)`` with one uniform draw in each.

Beta sampling: every bias has integer parameters, and the ``a``-th smallest of ``a + b - 1`` i.i.d.
``U[0, 1)`` variables is exactly ``Beta(a, b)`` distributed (uniform order statistics). Draws therefore
only use ``torch.rand(..., generator=generator)`` and are deterministic given the generator
(``torch.distributions.Beta`` / ``torch._standard_gamma`` do not accept a generator).

The ``K`` queries of a row are returned sorted ascending (duplicate indices are possible, except that
stratified queries are distinct whenever ``K <= n``).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

BETA_PARAMS: dict[str, tuple[int, int]] = {"low_t": (5, 2), "mid_t": (5, 5), "high_t": (2, 5)}
QUERY_BIASES = ("low_t", "mid_t", "high_t", "uniform", "stratified")


class Density(Protocol):
    """Elementwise density ``pdf(u: Tensor) -> Tensor`` (same shape as ``u``)."""

    def __call__(self, u: Tensor) -> Tensor: ...


def _check_bias(bias: str) -> None:
    if bias not in QUERY_BIASES:
        raise ValueError(f"unknown query bias {bias!r}; expected one of {QUERY_BIASES}")


def beta_int_sample(
    a: int, b: int, shape: tuple[int, ...], generator: torch.Generator | None = None, device=None
) -> Tensor:
    """Exact ``Beta(a, b)`` samples for integer ``a, b >= 1`` via uniform order statistics.

    Returns a float32 tensor of ``shape`` with values in ``[0, 1)``.
    """
    if int(a) != a or int(b) != b or a < 1 or b < 1:
        raise ValueError(f"beta_int_sample needs integer a, b >= 1, got a={a}, b={b}")
    n_uniform = int(a) + int(b) - 1
    uniforms = torch.rand(*shape, n_uniform, generator=generator, device=device)
    return torch.sort(uniforms, dim=-1).values[..., int(a) - 1]


def sample_query_u(
    batch: int,
    k: int = 1,
    bias: str = "low_t",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Query positions ``u`` ``[batch, k]`` (float32, in ``[0, 1)``, sorted along ``k``).

    Args:
        batch: number of rows (rollouts).
        k: queries per row.
        bias: one of :data:`QUERY_BIASES`.
        generator: torch.Generator (its device is used when ``device`` is None).
        device: output device.
    """
    _check_bias(bias)
    if batch < 0 or k < 1:
        raise ValueError(f"need batch >= 0 and k >= 1, got batch={batch}, k={k}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if bias in BETA_PARAMS:
        a, b = BETA_PARAMS[bias]
        u = beta_int_sample(a, b, (batch, k), generator=generator, device=device)
    elif bias == "uniform":
        u = torch.rand(batch, k, generator=generator, device=device)
    else:  # stratified
        offsets = torch.arange(k, device=device, dtype=torch.float32)
        u = (offsets + torch.rand(batch, k, generator=generator, device=device)) / k
    u = torch.sort(u, dim=-1).values
    # float rounding of (j + r) / k can reach 1.0; keep the documented half-open range
    return u.clamp(max=math.nextafter(1.0, 0.0))


def u_to_index(u: Tensor, n_steps: int) -> Tensor:
    """Map positions ``u`` in ``[0, 1)`` to queryable state indices ``min(floor(u * n), n - 1)`` (int64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.clamp(torch.floor(u * n_steps).long(), min=0, max=n_steps - 1)


def sample_query_indices(
    batch: int,
    n_steps: int,
    k: int = 1,
    bias: str = "low_t",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Indices of the trajectory states to query, ``LongTensor[batch, k]`` with values in ``0 .. n_steps-1``.

    Index ``i`` is the state ``x^(i)`` at ``timesteps[i]`` (``i`` Euler steps from noise). See the module
    docstring for the biases and the ``u -> index`` map.
    """
    return u_to_index(sample_query_u(batch, k, bias, generator=generator, device=device), n_steps)


def query_bias_pdf(bias: str) -> Density:
    """Density of a single query position ``u`` on ``[0, 1)`` under ``bias``.

    * Beta biases: ``u^(a-1) (1-u)^(b-1) / B(a, b)`` with ``(a, b)`` from :data:`BETA_PARAMS`;
    * ``"uniform"``: 1;
    * ``"stratified"``: pooling the ``K`` queries of a row, also uniform (density 1); the ``j``-th
      sorted query alone is uniform on ``[j/K, (j+1)/K)``.

    Returns:
        ``pdf(u: Tensor) -> Tensor`` (elementwise, zero outside ``[0, 1]``).
    """
    _check_bias(bias)
    if bias in BETA_PARAMS:
        a, b = BETA_PARAMS[bias]
        log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

        def beta_pdf(u: Tensor) -> Tensor:
            inside = (u >= 0) & (u <= 1)
            uc = u.clamp(0.0, 1.0)
            density = uc ** (a - 1) * (1 - uc) ** (b - 1) / math.exp(log_norm)
            return torch.where(inside, density, torch.zeros_like(density))

        return beta_pdf

    def uniform_pdf(u: Tensor) -> Tensor:
        return ((u >= 0) & (u < 1)).to(u.dtype if torch.is_floating_point(u) else torch.float32)

    return uniform_pdf


def query_bias_mean(bias: str) -> float:
    """Mean of ``u`` under ``bias`` (``a / (a + b)`` for the Beta biases, 1/2 otherwise)."""
    _check_bias(bias)
    if bias in BETA_PARAMS:
        a, b = BETA_PARAMS[bias]
        return a / (a + b)
    return 0.5
