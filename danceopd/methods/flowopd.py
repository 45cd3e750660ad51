"""Flow-OPD: on-policy SDE rollouts with transition log-probs; per-trajectory reward = minus the summed
transition KL between the student's and the teacher's Gaussian transitions; group-normalized advantages over
``group_size`` rollouts per condition; PPO-clipped policy-gradient loss on every step."""

from __future__ import annotations

import torch

from ..core import (
    gaussian_log_prob,
    group_advantages,
    ppo_clip_loss,
    sde_rollout,
    sde_transition,
    transition_kl,
)
from .base import Method, student_sources


class FlowOPD(Method):
    name = "flowopd"

    def loss(self, ctx, route, batch):
        cfg, s = ctx.cfg, ctx.student
        G = cfg.group_size
        B = len(batch.prompts)
        if B % G:
            raise ValueError(f"flowopd: batch size {B} must be a multiple of group_size {G}")
        # B // G conditions, each rolled out G times
        prompts = [p for p in batch.prompts[: B // G] for _ in range(G)]
        src = student_sources(ctx, batch)
        if src is not None:
            src = src[: B // G].repeat_interleave(G, dim=0)
        n = cfg.rollout_steps
        ts = s.timesteps(n, cfg.rollout_shift).to(ctx.device)
        noise = torch.randn(s.latent_shape(B), device=ctx.device)
        policy = s.guided_field(prompts, src, text_scale=cfg.rollout_text_scale)
        states, logp_old, means_old, stds = sde_rollout(policy, noise, ts, cfg.eta)
        x = states[:n].flatten(0, 1)
        t = ts[:n].repeat_interleave(B)
        t_next = ts[1 : n + 1].repeat_interleave(B)
        prompts_n = prompts * n
        src_n = None if src is None else src.repeat(n, *([1] * (src.dim() - 1)))
        with torch.no_grad():
            v_t = ctx.teachers[route.teacher].field(prompts_n, src_n)(x, t)
            mean_t, _ = sde_transition(x, v_t, t, t_next, cfg.eta)
            kl = transition_kl(means_old.flatten(0, 1), mean_t, stds.flatten(0, 1)).view(n, B)
            reward = -kl.sum(0)                                           # [B]
            adv = group_advantages(reward, G)
        v_new = s.velocity(x, t, s.encode(prompts_n, src_n))
        mean_new, std_new = sde_transition(x, v_new, t, t_next, cfg.eta)
        logp_new = gaussian_log_prob(states[1:].flatten(0, 1), mean_new, std_new)
        loss = ppo_clip_loss(logp_new, logp_old.flatten(), adv.repeat(n), clip=cfg.clip)
        return loss, {"reward": reward.mean().item(), "t_query": t.mean().item()}
