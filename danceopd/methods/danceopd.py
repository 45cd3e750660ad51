"""DanceOPD: hard route -> on-policy student ODE rollout (no grad) -> K low-noise query states (Beta(5,2) toward
the clean end) -> routed teacher velocity there -> plain velocity MSE."""

from __future__ import annotations

import torch

from ..core import accepts_rows, rollout_to_queries, sample_query_indices, velocity_mse
from .base import Method, OnPolicyConfig, StepContext, repeat_k, student_sources


def on_policy_queries(ctx: StepContext[OnPolicyConfig], batch):
    """Roll out the current student from noise and return (x [B*K, ...], t [B*K], prompts_k, sources_k, info)."""
    ro, qc, s = ctx.cfg.rollout, ctx.cfg.query, ctx.student
    B = len(batch.prompts)
    src = student_sources(ctx, batch)
    ts = s.timesteps(ro.steps, ro.shift)
    q = sample_query_indices(B, ro.steps, k=qc.k, bias=qc.bias)
    noise = torch.randn(s.latent_shape(B), device=ctx.device)
    roll = s.guided_field(batch.prompts, src, text_scale=ro.text_scale)
    # rows leave the rollout batch at their own deepest query (the whole batch stepping to the deepest one
    # costs ~1.35x the row evaluations at K=1, Beta(5,2), 8 steps, batch 32; scripts/bench_distill.py)
    r = rollout_to_queries(roll, noise, ts, q, per_row=accepts_rows(roll))
    prompts_k, src_k = repeat_k(batch.prompts, src, qc.k)
    x, t = r.x_q.flatten(0, 1), r.t_q.flatten()
    return x, t, prompts_k, src_k, {"t_query": t.mean().item(), "rollout_forwards": r.n_forward,
                                         "rollout_row_evals": r.row_evals}


class DanceOPD(Method[OnPolicyConfig]):
    name = "danceopd"
    Config = OnPolicyConfig

    def loss(self, ctx, route, batch):
        x, t, prompts_k, src_k, info = on_policy_queries(ctx, batch)
        with torch.no_grad():
            v_teacher = ctx.teachers[route.teacher].field(prompts_k, src_k)(x, t)
        v_student = ctx.student.velocity(x, t, ctx.student.encode(prompts_k, src_k))
        return velocity_mse(v_student.float(), v_teacher.float()), info
