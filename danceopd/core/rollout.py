"""Student rollouts: the on-policy states at which the student is supervised.

All rollouts run without autograd (``torch.no_grad``, *not* ``torch.inference_mode``: the returned
states are later fed to a student forward pass that needs gradients, and inference tensors cannot be
saved for backward). State ``i`` is ``x^(i)`` at ``timesteps[i]``; ``x^(0)`` is the noise.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from .flow import VelocityField, euler_step
from .sde import gaussian_log_prob, sde_step


@dataclass
class RolloutStates:
    """Queried states of a deterministic student rollout.

    Attributes:
        x_q: states ``[B, K, ...]``; ``x_q[b, j]`` is ``x^(query_idx[b, j])`` of row ``b``.
        t_q: their times ``[B, K]`` (``timesteps[query_idx]``).
        t_next: the next grid times ``[B, K]`` (``timesteps[query_idx + 1]``), e.g. for step sizes.
        n_forward: number of (batched) field calls spent (``= query_idx.max()``).
        row_evals: number of per-row velocity evaluations spent (``B * query_idx.max()`` when the whole batch
            steps together, ``sum_b max_j query_idx[b, j]`` with ``per_row=True``).
    """

    x_q: Tensor
    t_q: Tensor
    t_next: Tensor
    n_forward: int
    row_evals: int = 0


def _check_grid(timesteps: Tensor) -> int:
    if timesteps.dim() != 1 or timesteps.numel() < 2:
        raise ValueError(
            f"timesteps must be a 1-D grid with >= 2 entries, got shape {tuple(timesteps.shape)}"
        )
    return timesteps.numel() - 1


def accepts_rows(field: VelocityField) -> bool:
    """Whether ``field`` takes a ``rows=`` keyword (so :func:`rollout_to_queries` can use ``per_row=True``)."""
    try:
        return "rows" in inspect.signature(field).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def rollout_to_queries(
    field: VelocityField, noise: Tensor, timesteps: Tensor, query_idx: Tensor, per_row: bool = False
) -> RolloutStates:
    """Run the student's Euler ODE from ``noise`` only as deep as needed and keep only the queried states.

    The batch stops after ``m = query_idx.max()`` steps (the deepest query in the batch), so exactly ``m``
    batched field calls are made, and only ``K`` states per row are kept. By default every row steps with the
    batch until ``m`` (the extra states of rows with shallower queries are discarded). With ``per_row=True`` a
    row leaves the batch once its own deepest query is reached, so row ``b`` costs ``max_j query_idx[b, j]``
    evaluations instead of ``m``; ``field`` must then accept ``field(x [B'], t [B'], rows=LongTensor[B'])``
    (the batch rows being evaluated, e.g. :func:`danceopd.backends.base.guided_field`). Both modes give the
    same states up to floating-point differences between batch sizes.

    Args:
        field: student velocity field (called as ``field(x [B, ...], t [B])``).
        noise: ``x^(0)`` ``[B, ...]``.
        timesteps: descending grid ``[n + 1]``.
        query_idx: ``LongTensor[B, K]`` with values in ``0 .. n-1``.
        per_row: drop rows from the batch once their deepest query is reached.

    Returns:
        :class:`RolloutStates` (no autograd graph).
    """
    n_steps = _check_grid(timesteps)
    if query_idx.dim() != 2 or query_idx.shape[0] != noise.shape[0]:
        raise ValueError(
            f"query_idx must have shape [B, K] with B={noise.shape[0]}, got {tuple(query_idx.shape)}"
        )
    if query_idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"query_idx must be an integer tensor, got {query_idx.dtype}")
    query_idx = query_idx.to(device=noise.device, dtype=torch.int64)
    timesteps = timesteps.to(noise.device)
    if query_idx.numel() == 0:
        raise ValueError("query_idx is empty")
    lo, hi = int(query_idx.min()), int(query_idx.max())
    if lo < 0 or hi > n_steps - 1:
        raise ValueError(f"query indices must lie in [0, {n_steps - 1}], got range [{lo}, {hi}]")

    batch, k = query_idx.shape
    depth = query_idx.max(dim=1).values                              # [B] steps each row needs
    x_q = torch.empty((batch, k, *noise.shape[1:]), dtype=noise.dtype, device=noise.device)
    x = noise.clone() if per_row else noise
    row_evals = 0
    for i in range(hi + 1):
        rows, cols = torch.nonzero(query_idx == i, as_tuple=True)
        if rows.numel() > 0:
            x_q[rows, cols] = x[rows]
        if i == hi:
            break
        active = torch.nonzero(depth > i, as_tuple=True)[0] if per_row else None
        if active is None or active.numel() == batch:
            x = euler_step(field, x, timesteps[i], timesteps[i + 1])
            row_evals += batch
        else:
            x[active] = euler_step(lambda x_t, t, a=active: field(x_t, t, rows=a), x[active], timesteps[i],
                                   timesteps[i + 1])
            row_evals += active.numel()
    return RolloutStates(x_q=x_q, t_q=timesteps[query_idx], t_next=timesteps[query_idx + 1], n_forward=hi,
                         row_evals=row_evals)


@torch.no_grad()
def full_rollout(field: VelocityField, noise: Tensor, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    """Deterministic Euler rollout keeping every state (dense methods such as DiffusionOPD, and tests).

    Args:
        field: velocity field.
        noise: ``[B, ...]``.
        timesteps: descending grid ``[n + 1]``.

    Returns:
        ``(states [n + 1, B, ...], timesteps [n + 1])``; ``states[i]`` is ``x^(i)``.
    """
    n_steps = _check_grid(timesteps)
    timesteps = timesteps.to(noise.device)
    states = torch.empty((n_steps + 1, *noise.shape), dtype=noise.dtype, device=noise.device)
    states[0] = noise
    x = noise
    for i in range(n_steps):
        x = euler_step(field, x, timesteps[i], timesteps[i + 1])
        states[i + 1] = x
    return states, timesteps


@torch.no_grad()
def sde_rollout(
    field: VelocityField,
    noise: Tensor,
    timesteps: Tensor,
    eta: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stochastic (Flow-GRPO) rollout with per-step transition log-probabilities, for Flow-OPD.

    Step ``i`` draws ``x^(i+1) ~ N(mean_i, std_i^2 I)`` (:func:`danceopd.core.sde.sde_step`) and records
    ``log N(x^(i+1); mean_i, std_i^2 I)`` of the state actually stored (after the cast to the state dtype).

    Args:
        field: velocity field (the policy).
        noise: ``[B, ...]``.
        timesteps: descending grid ``[n + 1]``.
        eta: SDE noise level, must be > 0 (use :func:`full_rollout` for the deterministic ODE).
        generator: torch.Generator on ``noise.device``.

    Returns:
        ``states [n + 1, B, ...]``, ``log_probs [n, B]``, ``means [n, B, ...]``, ``stds [n, B, 1, ..., 1]``.
    """
    if eta <= 0:
        raise ValueError(f"sde_rollout needs eta > 0 for finite log-probabilities, got {eta}")
    n_steps = _check_grid(timesteps)
    timesteps = timesteps.to(noise.device)
    states = [noise]
    log_probs, means, stds = [], [], []
    x = noise
    batch = noise.shape[0]
    for i in range(n_steps):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = field(x, t.expand(batch))
        x, mean, std = sde_step(x, v, t, t_next, eta, generator=generator)
        states.append(x)
        means.append(mean)
        stds.append(std)
        log_probs.append(gaussian_log_prob(x, mean, std))
    return torch.stack(states), torch.stack(log_probs), torch.stack(means), torch.stack(stds)
