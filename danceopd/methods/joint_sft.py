"""Joint SFT, the naive student: flow-matching SFT on the mixture of all buckets' data, every route in every
step (task gradients averaged), from the same initialization. Samples with CFG like any SFT model."""

from __future__ import annotations

from .base import Method, NoConfig, student_sources
from .sft import sft_squared_error


class JointSFT(Method[NoConfig]):
    name = "joint_sft"
    group_routes = True
    student_text_scale = 3.0

    def loss(self, ctx, route, batch):
        x_0 = ctx.student.encode_images(batch.x_0)
        sq, t = sft_squared_error(ctx.student, x_0, batch.prompts, student_sources(ctx, batch),
                                  text_dropout=ctx.text_dropout)
        return sq.mean(), {"t_query": t.mean().item()}
