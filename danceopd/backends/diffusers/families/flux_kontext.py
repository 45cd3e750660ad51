"""``backend: flux_kontext``: FLUX.1 Kontext (``FluxKontextPipeline``, ``FluxTransformer2DModel``).

Conventions (from ``FluxKontextPipeline.__call__``): latents [B, C, H, W] are packed into 2x2 patches
(``[B, H/2 * W/2, 4C]`` tokens, position ids (0, row, col)); the transformer is called with ``timestep = sigma``
(the scheduler's timesteps divided by 1000; the model scales by 1000 inside) and, for guidance-distilled
checkpoints, the embedded ``guidance`` value; its output is the flow velocity ``noise - x_0`` for the image
tokens as is, and the scheduler step is ``x + (sigma_next - sigma) * v``.

Editing is native: the source image's latents are packed the same way and appended as extra tokens with their
own position ids (first id 1 instead of 0); only the target tokens' outputs are read. T2I is the same call
without the extra tokens. The sampling grid is the pipeline's: ``linspace(1, 1/n, n)`` with the
resolution-dependent shift ``mu``.
"""

from __future__ import annotations

import numpy as np
import torch

from ...registry import register_family
from ...world import SamplingConfig
from ..backend import (
    DiffusersBackend,
    dynamic_kwargs,
    run_grouped,
    stack_entries,
)
from ..family import DiffusersFamily
from ..options import unwrap


def pack(z: torch.Tensor) -> torch.Tensor:
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def token_ids(h: int, w: int, first: float, device, dtype) -> torch.Tensor:
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = first
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxKontextBackend(DiffusersBackend):
    name = "flux_kontext"

    def encode_text(self, prompts, with_source):
        pipe, msl = self.shared.pipe, self.opts.max_sequence_length

        def compute(keys):
            pe, pooled, _ = pipe.encode_prompt(prompt=[k[2] for k in keys], prompt_2=None, device=self.device,
                                               max_sequence_length=msl)
            return [(pe[i], pooled[i]) for i in range(len(keys))]

        ctx, pooled = stack_entries(self.shared.cached([("flux", msl, p) for p in prompts], compute))
        return {"ctx": ctx, "pooled": pooled}

    def scheduler_kwargs(self, n):
        s = self.resolution // self.shared.vae_scale // 2
        return {"sigmas": np.linspace(1.0, 1 / n, n), **dynamic_kwargs(self.shared.pipe.scheduler, s * s, n)}

    def forward(self, model, x_t, t, cond):
        net, dt = unwrap(model), self.compute_dtype
        b, _, h, w = x_t.shape
        ctx, pooled = cond.text["ctx"], cond.text["pooled"]
        ids = token_ids(h, w, 0, x_t.device, dt)
        txt_ids = torch.zeros(ctx.shape[1], 3, device=x_t.device, dtype=dt)
        has = self.source_rows(cond, b)

        def run(idx, with_src):
            idx_d = idx.to(x_t.device)
            tokens, img_ids = pack(x_t[idx_d]), ids
            n = tokens.shape[1]
            if with_src:
                src = cond.source[idx_d].to(x_t.dtype)
                tokens = torch.cat([tokens, pack(src)], dim=1)
                img_ids = torch.cat([ids, token_ids(src.shape[2], src.shape[3], 1, x_t.device, dt)])
            guidance = None
            if net.config.guidance_embeds:
                guidance = torch.full((len(idx),), self.opts.guidance, device=x_t.device, dtype=torch.float32)
            out = model(hidden_states=tokens.to(dt), timestep=t[idx_d], guidance=guidance,
                        pooled_projections=pooled[idx_d].to(dt), encoder_hidden_states=ctx[idx_d].to(dt),
                        txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
            return unpack(out[:, :n], h, w)

        groups = [(torch.nonzero(has).flatten(), True), (torch.nonzero(~has).flatten(), False)]
        return run_grouped(x_t, groups, run)


class FluxKontextFamily(DiffusersFamily):
    name = "flux_kontext"
    pipeline_attr = "FluxKontextPipeline"
    pipeline_classes = ("FluxKontextPipeline", "FluxPipeline")
    transformer_class = "FluxTransformer2DModel"
    default_sampling = SamplingConfig(steps=28, text_scale=1.0)
    backend_cls = FluxKontextBackend
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]


register_family(FluxKontextFamily())
