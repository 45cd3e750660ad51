"""Classifier-free guidance (CFG) as arithmetic on velocity fields.

A guided field is itself a velocity field, so it can serve directly as a *teacher target*: distilling
``v_teacher = cfg_combine(v_cond, v_uncond, alpha)`` into a student that is evaluated once, without
guidance, "absorbs" the guidance into the student (CFG absorption). ``alpha`` may be a per-sample
``Tensor[B]``, so one batch can mix guidance scales (e.g. when the student is conditioned on alpha).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .flow import _compute_dtype

GuidanceScale = float | Tensor


def _expand_scale(scale: GuidanceScale, like: Tensor) -> Tensor:
    """``scale`` (float, 0-dim or ``[B]``) reshaped to ``[B, 1, ..., 1]`` (or kept 0-dim)."""
    scale = torch.as_tensor(scale, device=like.device)
    if scale.dim() == 0:
        return scale
    if scale.shape != (like.shape[0],):
        raise ValueError(
            f"guidance scale must be a scalar or [B]=[{like.shape[0]}], got {tuple(scale.shape)}"
        )
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, alpha: GuidanceScale) -> Tensor:
    """Classifier-free guidance: ``v_uncond + alpha * (v_cond - v_uncond)``.

    ``alpha = 1`` returns ``v_cond``, ``alpha = 0`` returns ``v_uncond``; the result is affine in alpha.

    Args:
        v_cond: conditional velocity ``[B, ...]``.
        v_uncond: unconditional velocity ``[B, ...]``.
        alpha: guidance scale, float or ``[B]``.

    Returns:
        Guided velocity ``[B, ...]``.
    """
    a = _expand_scale(alpha, v_cond)
    if torch.is_floating_point(a):
        a = a.to(_compute_dtype(v_cond, v_uncond))
    return v_uncond + a * (v_cond - v_uncond)


def cfg_combine_edit(
    v_full: Tensor,
    v_img: Tensor,
    v_uncond: Tensor,
    text_scale: GuidanceScale,
    image_scale: GuidanceScale,
) -> Tensor:
    """Two-condition (InstructPix2Pix-style) guidance for editing.

    ``v = v_uncond + image_scale * (v_img - v_uncond) + text_scale * (v_full - v_img)``.

    With ``text_scale = image_scale = 1`` this is ``v_full``; with ``text_scale = 0`` it is plain CFG on the
    source image (:func:`cfg_combine` of ``v_img`` vs ``v_uncond``); with ``image_scale = 1`` it is plain CFG
    on the instruction with the image always given (``cfg_combine(v_full, v_img, text_scale)``).

    Args:
        v_full: velocity conditioned on source image and instruction ``[B, ...]``.
        v_img: velocity conditioned on the source image only ``[B, ...]``.
        v_uncond: velocity with no conditions ``[B, ...]``.
        text_scale: instruction guidance scale, float or ``[B]``.
        image_scale: image guidance scale, float or ``[B]``.

    Returns:
        Guided velocity ``[B, ...]``; usable as an edit-teacher target (CFG absorption).
    """
    s_t = _expand_scale(text_scale, v_full)
    s_i = _expand_scale(image_scale, v_full)
    dtype = _compute_dtype(v_full, v_img, v_uncond)
    if torch.is_floating_point(s_t):
        s_t = s_t.to(dtype)
    if torch.is_floating_point(s_i):
        s_i = s_i.to(dtype)
    return v_uncond + s_i * (v_img - v_uncond) + s_t * (v_full - v_img)
