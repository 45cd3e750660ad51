"""Distillation objectives on velocity fields.

* :func:`velocity_mse`: plain velocity matching at queried states (DanceOPD, CFG absorption).
* :func:`dense_ode_kl`: trajectory-level KL of Euler kernels summed over all steps (DiffusionOPD-style).
* :func:`transition_kl`, :func:`kl_reward`, :func:`group_advantages`, :func:`ppo_clip_loss`: Flow-OPD,
  which rewards each SDE transition with the sampled teacher/student log-ratio (whose expectation is
  ``kl_reward``, minus the per-step KL to the teacher's transition) and optimizes it with a clipped
  policy-gradient objective (``danceopd.methods.flowopd``).
* :func:`binned_loss`: per-``t``-bin diagnostic of a per-sample loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _per_sample_sum(x: Tensor) -> Tensor:
    """Sum over all non-batch dims: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def velocity_mse(v_student: Tensor, v_teacher: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error between velocities.

    Without ``weight``: ``mean((v_student - v_teacher)^2)`` over all elements. With ``weight [B]``:
    ``mean_b(weight_b * mean_d((v_student - v_teacher)_{b,d}^2))``, which equals the plain MSE for
    ``weight = 1``.

    Args:
        v_student: ``[B, ...]`` (with grad).
        v_teacher: ``[B, ...]`` target (detach it yourself if it comes from a trainable module).
        weight: optional per-sample weight ``[B]``.

    Returns:
        Scalar loss.
    """
    if v_student.shape != v_teacher.shape:
        raise ValueError(
            f"shape mismatch: v_student {tuple(v_student.shape)} vs v_teacher {tuple(v_teacher.shape)}"
        )
    sq = (v_student - v_teacher) ** 2
    if weight is None:
        return sq.mean()
    if weight.shape != (v_student.shape[0],):
        raise ValueError(f"weight must have shape [B]=[{v_student.shape[0]}], got {tuple(weight.shape)}")
    per_sample = sq.reshape(sq.shape[0], -1).mean(dim=1)
    return (weight.to(per_sample.dtype) * per_sample).mean()


def dense_ode_kl(v_student: Tensor, v_teacher: Tensor, dt: Tensor) -> Tensor:
    """Trajectory KL between student and teacher Euler kernels, summed over steps.

    ``L = mean_b sum_i dt_i^2 / 2 * ||v_student[i, b] - v_teacher[i, b]||^2`` (squared norm over all
    non-batch dims).

    If both samplers add the same isotropic noise ``N(0, s^2 I)`` to their Euler step
    ``x + dt_i * v``, the per-step KL is ``dt_i^2 ||v_s - v_t||^2 / (2 s^2)``; this function returns that
    sum with the noise variance normalized to ``s^2 = 1`` (multiply by ``1 / s^2`` for another level). The
    sum runs over steps (not averaged), the mean over the batch. The sign of ``dt`` does not matter.

    Args:
        v_student: ``[T, B, ...]``.
        v_teacher: ``[T, B, ...]``.
        dt: step sizes ``[T]`` (e.g. ``timesteps[1:] - timesteps[:-1]``).

    Returns:
        Scalar loss.
    """
    if v_student.shape != v_teacher.shape:
        raise ValueError(
            f"shape mismatch: v_student {tuple(v_student.shape)} vs v_teacher {tuple(v_teacher.shape)}"
        )
    if v_student.dim() < 2 or dt.shape != (v_student.shape[0],):
        raise ValueError(
            f"need v [T, B, ...] and dt [T]; got v {tuple(v_student.shape)}, dt {tuple(dt.shape)}"
        )
    n_steps, batch = v_student.shape[:2]
    sq_norm = ((v_student - v_teacher) ** 2).reshape(n_steps, batch, -1).sum(dim=2)  # [T, B]
    dt = dt.to(device=sq_norm.device, dtype=sq_norm.dtype).reshape(n_steps, 1)
    return (dt**2 / 2 * sq_norm).sum(dim=0).mean()


def transition_kl(mean_student: Tensor, mean_teacher: Tensor, std: Tensor | float) -> Tensor:
    """KL between two Gaussians with the same isotropic std: ``||mu_s - mu_t||^2 / (2 std^2)``.

    Args:
        mean_student: ``[B, ...]``.
        mean_teacher: ``[B, ...]``.
        std: ``> 0``, broadcastable to the means (e.g. ``[B, 1, ..., 1]`` from :func:`sde_transition`).

    Returns:
        ``Tensor[B]`` (summed over non-batch dims).
    """
    diff_sq = (mean_student - mean_teacher) ** 2
    std = torch.as_tensor(std, device=diff_sq.device, dtype=diff_sq.dtype)
    return _per_sample_sum(diff_sq / (2 * std**2))


def kl_reward(mean_student: Tensor, mean_teacher: Tensor, std: Tensor | float) -> Tensor:
    """Flow-OPD reward ``-transition_kl(mean_student, mean_teacher, std)``, ``Tensor[B]``."""
    return -transition_kl(mean_student, mean_teacher, std)


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """Group-normalized advantages ``(r - mean_group) / (std_group + eps)``.

    Args:
        rewards: ``[G * N]``; consecutive blocks of ``group_size`` entries form a group (samples that
            share a prompt / condition).
        group_size: ``G``.
        eps: stabilizer; the std is the population std (``unbiased=False``).

    Returns:
        ``[G * N]`` advantages, zero mean within each group.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [G * N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"len(rewards)={rewards.numel()} is not a multiple of group_size={group_size}")
    grouped = rewards.reshape(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


def ppo_clip_loss(
    log_prob_new: Tensor, log_prob_old: Tensor, advantages: Tensor, clip: float = 0.2
) -> Tensor:
    """PPO clipped surrogate ``mean(max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)))``.

    ``ratio = exp(log_prob_new - log_prob_old)``. Gradient flows through ``log_prob_new`` only where the
    unclipped term is selected.

    Args:
        log_prob_new: ``[B]`` (with grad).
        log_prob_old: ``[B]`` (rollout policy, no grad).
        advantages: ``[B]``.
        clip: clip range ``c``.

    Returns:
        Scalar loss.
    """
    ratio = torch.exp(log_prob_new - log_prob_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped).mean()


def binned_loss(per_sample_loss: Tensor, t: Tensor, n_bins: int = 10) -> dict[int, float]:
    """Mean loss per ``t`` bin (minRF-style diagnostic).

    Bin ``i`` covers ``[i / n_bins, (i + 1) / n_bins)`` (``t = 1`` goes to the last bin).

    Args:
        per_sample_loss: ``[B]``.
        t: times ``[B]`` in ``[0, 1]``.
        n_bins: number of equal-width bins.

    Returns:
        ``{bin_index: mean_loss}`` for the non-empty bins only (Python floats, detached).
    """
    if per_sample_loss.shape != t.shape or per_sample_loss.dim() != 1:
        raise ValueError(
            f"need per_sample_loss [B] and t [B], got {tuple(per_sample_loss.shape)}, {tuple(t.shape)}"
        )
    loss = per_sample_loss.detach().double().cpu()
    bins = torch.clamp((t.detach().double().cpu() * n_bins).floor().long(), 0, n_bins - 1)
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, loss)
    counts = torch.bincount(bins, minlength=n_bins)
    return {i: float(sums[i] / counts[i]) for i in range(n_bins) if counts[i] > 0}
