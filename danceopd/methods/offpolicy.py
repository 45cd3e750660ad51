"""Off-policy distillation: the routed teacher is queried on states the student did not produce: forward-noised
data (default) or the teacher's own rollout (``offpolicy_states: teacher_rollout``). Same grid and query bias as
DanceOPD, so the only difference is whose states are supervised."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core import interpolate, rollout_to_queries, sample_query_indices, velocity_mse
from .base import Method, QueryConfig, RolloutConfig, repeat_k, rollout_inputs


@dataclass
class OffPolicySection:
    """``offpolicy:``: whose states the teacher is queried on."""

    states: str = "noised_data"

    def validate(self):
        if self.states not in ("noised_data", "teacher_rollout"):
            raise ValueError("offpolicy.states must be 'noised_data' or 'teacher_rollout'")


@dataclass
class OffPolicyConfig:
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    offpolicy: OffPolicySection = field(default_factory=OffPolicySection)


class OffPolicy(Method[OffPolicyConfig]):
    name = "offpolicy"
    Config = OffPolicyConfig

    def loss(self, ctx, route, batch):
        ro, qc, s = ctx.cfg.rollout, ctx.cfg.query, ctx.student
        B, src, ts = rollout_inputs(ctx, batch, ro)
        q = sample_query_indices(B, ro.steps, k=qc.k, bias=qc.bias)
        prompts_k, src_k = repeat_k(batch.prompts, src, qc.k)
        teacher = ctx.teachers[route.teacher]
        if ctx.cfg.offpolicy.states == "teacher_rollout":
            noise = torch.randn(s.latent_shape(B), device=ctx.device)
            r = rollout_to_queries(teacher.field(batch.prompts, src), noise, ts, q)
            x, t = r.x_q.flatten(0, 1), r.t_q.flatten()
        else:
            t = ts[q.to(ctx.device)].flatten()
            x_0 = ctx.student.encode_images(batch.x_0).repeat_interleave(qc.k, dim=0)
            x = interpolate(x_0, torch.randn_like(x_0), t)
        with torch.no_grad():
            v_teacher = teacher.field(prompts_k, src_k)(x, t)
        v_student = s.velocity(x, t, s.encode(prompts_k, src_k))
        return velocity_mse(v_student.float(), v_teacher.float()), {"t_query": t.mean().item()}
