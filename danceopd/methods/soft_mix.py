"""Soft teacher averaging: no routing of the target. On the same on-policy states as DanceOPD, the target is the
weight-averaged velocity of ALL teacher fields (each reading the conditions it accepts)."""

from __future__ import annotations

import torch

from ..core import velocity_mse
from .base import Method, OnPolicyConfig
from .danceopd import on_policy_queries


class SoftMix(Method[OnPolicyConfig]):
    name = "soft_mix"
    Config = OnPolicyConfig

    def loss(self, ctx, route, batch):
        x, t, prompts_k, src_k, info = on_policy_queries(ctx, batch)
        weights = ctx.route_weights or {name: 1.0 for name in ctx.teachers}
        total = sum(weights.values())
        with torch.no_grad():
            v_teacher = sum(w / total * ctx.teachers[n].field(prompts_k, src_k)(x, t).float()
                            for n, w in weights.items())
        v_student = ctx.student.velocity(x, t, ctx.student.encode(prompts_k, src_k))
        return velocity_mse(v_student.float(), v_teacher), info
