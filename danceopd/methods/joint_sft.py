"""Joint SFT, the naive student: flow-matching SFT on the mixture of all buckets' data, every route in every
step (task gradients averaged), from the same initialization. Samples with CFG like any SFT model."""

from __future__ import annotations

import torch

from ..core import interpolate, sample_t, velocity_mse, velocity_target
from .base import Method, student_sources


class JointSFT(Method):
    name = "joint_sft"
    group_routes = True
    uses_data_targets = True
    student_text_scale = 3.0

    def loss(self, ctx, route, batch):
        B = len(batch.prompts)
        x_0 = ctx.student.encode_images(batch.x_0)
        noise = torch.randn_like(x_0)
        t = sample_t(B).to(x_0.device)   # drawn on the CPU generator, used where x_0 lives
        drop = torch.rand(B) < ctx.cfg.text_dropout
        cond = ctx.student.encode(batch.prompts, student_sources(ctx, batch), drop_text=drop)
        v = ctx.student.velocity(interpolate(x_0, noise, t), t, cond)
        return velocity_mse(v.float(), velocity_target(x_0, noise)), {"t_query": t.mean().item()}
