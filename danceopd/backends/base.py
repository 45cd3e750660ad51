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
