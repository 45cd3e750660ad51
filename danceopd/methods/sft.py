"""The flow-matching SFT objective, written once: used by the SFT trainer (``train/sft.py``, teachers) and by the
joint-SFT baseline (``methods/joint_sft.py``)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..backends.base import Backend
from ..core import interpolate, sample_t, velocity_target


def sft_squared_error(model: Backend, x_0: torch.Tensor, prompts: list[str], sources: torch.Tensor | None, *,
                      text_dropout: float, t_dist: str = "logit_normal", source_dropout: float | None = None,
                      source_valid: torch.Tensor | None = None,
                      autocast: AbstractContextManager | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared velocity error ``(v(x_t, t) - (noise - x_0))^2`` ``[B, ...]`` (float32) and the drawn ``t`` ``[B]``.

    ``x_t = (1 - t) x_0 + t noise`` with noise ~ N(0, I) and t from ``t_dist`` (drawn on the CPU generator, so the
    same t on any device); the prompt is dropped to "" with probability ``text_dropout`` and, when
    ``source_dropout`` is given, the source with that probability (and wherever ``source_valid`` [B] is False).
    ``autocast`` wraps the model call only. Random draws, in order: noise, t, text drop, source drop."""
    B = len(prompts)
    noise = torch.randn_like(x_0)
    t = sample_t(B, dist=t_dist).to(x_0.device)
    x_t = interpolate(x_0, noise, t)
    drop_text = torch.rand(B) < text_dropout
    drop_source = None
    if source_dropout is not None:
        drop_source = torch.rand(B) < source_dropout
        if source_valid is not None:
            drop_source = drop_source | ~source_valid
    cond = model.encode(prompts, sources, drop_text=drop_text, drop_source=drop_source)
    with autocast or nullcontext():
        v = model.velocity(x_t, t, cond)
    return (v.float() - velocity_target(x_0, noise)) ** 2, t
