"""DiffusionOPD: dense on-policy ODE states (every state of the student's rollout), the Delta-t^2/2-weighted
dense ODE-KL between student and teacher velocities, every route in every update (G = M)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core import dense_ode_kl, full_rollout
from .base import Method, RolloutConfig, rollout_inputs


@dataclass
class DenseConfig:
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


class DiffusionOPD(Method[DenseConfig]):
    name = "diffusionopd"
    Config = DenseConfig
    group_routes = True

    def loss(self, ctx, route, batch):
        ro, s = ctx.cfg.rollout, ctx.student
        B, src, ts = rollout_inputs(ctx, batch, ro)
        n = ro.steps
        noise = torch.randn(s.latent_shape(B), device=ctx.device)
        states, _ = full_rollout(s.guided_field(batch.prompts, src, text_scale=ro.text_scale), noise, ts)
        x = states[:n].flatten(0, 1)                      # [n*B, ...] (step-major)
        t = ts[:n].repeat_interleave(B)
        prompts_n = batch.prompts * n
        src_n = None if src is None else src.repeat(n, *([1] * (src.dim() - 1)))
        with torch.no_grad():
            v_t = ctx.teachers[route.teacher].field(prompts_n, src_n)(x, t)
        v_s = s.velocity(x, t, s.encode(prompts_n, src_n))
        dt = ts[:n] - ts[1 : n + 1]
        shape = (n, B, *x.shape[1:])
        return dense_ode_kl(v_s.float().view(shape), v_t.float().view(shape), dt), {"t_query": t.mean().item()}
