"""The two protocols of the model layer, and the classifier-free-guided field every backend builds on.

``Backend``: one model (a frozen teacher or the trainable student) as the trainers and methods see it; ShapesWorld's
``WorldBackend`` and every ``DiffusersBackend`` implement it. ``Family``: how the trainers obtain backends of one
kind (``backend: world | sd3 | zimage | flux_kontext`` in a config); ``WorldFamily`` and every ``DiffusersFamily``
implement it. Both are structural (``typing.Protocol``): nothing inherits from them, ``tests/backends`` checks the
implementations against them.

Conventions (``danceopd.core.flow``): states ``x_t = (1 - t) x_0 + t noise`` ``[B, C, H, W]`` (pixels or VAE latents),
``t`` ``[B]`` in [0, 1] with ``t = 1`` noise, velocity ``v = noise - x_0``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

# ``(x_t [B, ...], t [B], rows: LongTensor[B'] | None = None) -> v [B or B', ...]``
Field = Callable[..., torch.Tensor]


@runtime_checkable
class Backend(Protocol):
    """- ``encode(prompts, sources=None, drop_text=None, drop_source=None) -> cond``: conditions encoded once per
      step (text states, and the source image ``[B, 3, H, W]`` in [-1, 1] for edits); ``drop_*`` ([B] bool)
      replace a condition by its null value. A cond has ``cat(other)`` and ``select(rows)``.
    - ``velocity(x_t, t, cond) -> v``; ``guided_field(prompts, sources, text_scale, image_scale) -> Field``.
    - ``timesteps(n_steps=None, shift=None) -> Tensor[n_steps + 1]``: the sampling grid (t = 1 noise -> 0 data).
    - ``latent_shape(batch)``; ``encode_images(pixels [B, 3, H, W]) -> states``; ``sample(...) -> uint8 [B, H, W, 3]``.
    - ``model``: the (possibly Accelerate-wrapped) trainable module; the trainer replaces it by the prepared one.
    """

    name: str
    model: Any
    resolution: int
    sampling: Any                     # backends.world.SamplingConfig: the exported model's sampler

    @property
    def is_edit(self) -> bool: ...

    def encode(self, prompts: list[str], sources: torch.Tensor | None = None, drop_text=None,
               drop_source=None) -> Any: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def guided_field(self, prompts: list[str], sources: torch.Tensor | None = None, text_scale: float | None = None,
                     image_scale: float | None = None) -> Field: ...

    def timesteps(self, n_steps: int | None = None, shift: float | None = None) -> torch.Tensor: ...

    def latent_shape(self, batch: int) -> tuple[int, ...]: ...

    def encode_images(self, x: torch.Tensor) -> torch.Tensor: ...

    def sample(self, prompts: list[str], sources: np.ndarray | None = None, seed: int = 0, **kw) -> np.ndarray: ...

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...


@runtime_checkable
class Family(Protocol):
    """- ``configure(options)``: the family under a config's ``diffusers:`` section (``world`` ignores it).
    - ``data_resolution``: the fixed image size its data must have (None: ShapesWorld renders at the teachers').
    - ``check(spec)``: cheap validation of a model spec before anything loads (``UserError`` on a bad one).
    - ``load_teacher(spec, device)``: a frozen backend.
    - ``build_student(init, teachers, needs_edit, merge, freeze_text, lora)``: the trainable backend; ``init`` may
      be ``merged`` (the teachers' weighted sum, ``merge`` coefficients); ``lora`` (or None) adds adapters.
    - ``export(student, out, sampling, meta, lora)``: write the trained student to the run folder.
    """

    name: str

    @property
    def data_resolution(self) -> int | None: ...

    def configure(self, options: Any) -> Family: ...

    def check(self, spec: str) -> Any: ...

    def load_teacher(self, spec: str, device: Any = "cpu") -> Backend: ...

    def build_student(self, init: str, teachers: list, needs_edit: bool, merge: list[float] | None,
                      freeze_text: bool, lora: Any = None) -> Backend: ...

    def export(self, student: Any, out: Path, sampling: Any, meta: dict, lora: bool) -> Path: ...


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
