"""What a training method is: a loss for one route's micro-batch, computed from the student and teacher fields.

Methods see models only through the backend protocol (``encode``, ``velocity``, ``guided_field``,
``timesteps``, ``latent_shape``) and the math in ``danceopd.core``; the engine owns data, routing, optimizers and
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TeacherField:
    """A frozen teacher as a field provider. ``text_scale``/``image_scale`` != 1 make it a CFG operator field
    (v_u + alpha (v_c - v_u)): the student then absorbs the guidance (CFG absorption)."""

    backend: Any
    text_scale: float = 1.0
    image_scale: float = 1.0

    def field(self, prompts: list[str], sources: torch.Tensor | None):
        src = sources if getattr(self.backend, "is_edit", True) else None
        return self.backend.guided_field(prompts, src, text_scale=self.text_scale, image_scale=self.image_scale)


@dataclass
class MethodConfig:
    """The method-relevant slice of a distillation config (filled by the engine)."""

    rollout_steps: int = 8
    rollout_shift: float = 1.0
    rollout_text_scale: float = 1.0
    k: int = 1
    bias: str = "low_t"
    offpolicy_states: str = "noised_data"
    eta: float = 0.7
    group_size: int = 4
    clip: float = 0.2
    text_dropout: float = 0.1
    soft_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    student: Any                     # backend with trainable parameters
    teachers: dict[str, TeacherField]
    cfg: MethodConfig
    device: torch.device = torch.device("cpu")


class Method:
    """Subclasses set ``name`` and implement ``loss``. ``group_routes``: every route in every step (G = M)."""

    name = ""
    group_routes = False
    trains = True
    uses_data_targets = False        # reads batch.x_0 (SFT-like / off-policy data states)
    student_text_scale = 1.0         # guidance the trained student samples with (CFG absorbed: 1.0)

    def loss(self, ctx: StepContext, route, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def student_sources(ctx: StepContext, batch) -> torch.Tensor | None:
    """The batch's source images (None for T2I routes), on the student's device."""
    if batch.source is None or not bool(batch.has_source.any()):
        return None
    return batch.source.to(ctx.device)


def repeat_k(prompts: list[str], sources: torch.Tensor | None, k: int):
    """Repeat each condition k times (row-major, matching ``x_q.flatten(0, 1)``)."""
    p = [q for q in prompts for _ in range(k)]
    return p, (None if sources is None else sources.repeat_interleave(k, dim=0))
