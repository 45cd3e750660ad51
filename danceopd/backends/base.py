"""The one small protocol every model backend implements (ShapesWorld's WorldUNet and the diffusers adapters).

The training engines (SFT and distillation) and the evaluation harness talk to models only through it:

- ``encode(prompts, sources=None, drop_text=None, drop_source=None) -> Cond``: conditions encoded once per step
  (text states, and the source image for edits); ``drop_*`` ([B] bool) replace a condition by its null value.
- ``velocity(x_t, t, cond) -> v``: the velocity field at ``x_t`` ``[B, C, H, W]``, ``t`` ``[B]`` in [0, 1].
- ``timesteps(n_steps) -> Tensor[n_steps + 1]``: the sampling grid (t = 1 noise -> 0 data) with its time shift.
- ``latent_shape(batch) -> tuple``: the shape of a state x_t; ``to_images``/``from_images``: the codec between
  states and uint8 images (identity scaling in pixel space, a VAE for diffusers backends).
- ``trainable_parameters()``, ``save(path)`` and ``load`` through the registry.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    name: str

    def encode(self, prompts: list[str], sources: torch.Tensor | None = None, drop_text=None,
               drop_source=None) -> Any: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def timesteps(self, n_steps: int) -> torch.Tensor: ...

    def latent_shape(self, batch: int) -> tuple[int, ...]: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...


def guided_field(backend, prompts: list[str], sources, s_txt: float, s_img: float):
    """Classifier-free-guided velocity field ``(x_t, t, rows=None) -> v`` of any backend whose conditions ``cat``
    and ``select``, with one batched forward per call. T2I: ``v_u + s_txt (v_c - v_u)``; edit
    (InstructPix2Pix-style): ``v_u + s_img (v_img - v_u) + s_txt (v_c - v_img)`` (v_img: source, empty prompt;
    v_u: neither); with ``s_img = 1`` the v_u pass is skipped, with no guidance at all a single pass remains.
    ``rows`` (``LongTensor[B']``) evaluates only those rows of the batch (``x_t`` then has ``B'`` rows), as the
    per-row truncated rollout (:func:`danceopd.core.rollout_to_queries`) does."""
    from ..core.cfg import cfg_combine, cfg_combine_edit

    B = len(prompts)
    parts = [backend.encode(prompts, sources)]                   # cond
    if s_txt != 1.0 or (sources is not None and s_img != 1.0):
        parts.append(backend.encode([""] * B, sources))          # empty prompt (with the source, if any)
    if sources is not None and s_img != 1.0:
        parts.append(backend.encode([""] * B, None))             # neither
    full = functools.reduce(lambda a, b: a.cat(b), parts)
    n = len(parts)

    def conds(rows):
        return full if rows is None else functools.reduce(lambda a, b: a.cat(b), [p.select(rows) for p in parts])

    def field(x, t, rows=None):
        if n == 1:
            return backend.velocity(x, t, conds(rows))
        v = backend.velocity(torch.cat([x] * n), torch.cat([t] * n), conds(rows))
        if n == 2:
            return cfg_combine(*v.chunk(2), s_txt)
        return cfg_combine_edit(*v.chunk(3), s_txt, s_img)

    return field
