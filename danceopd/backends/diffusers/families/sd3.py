"""``backend: sd3``: Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``).

Conventions (from ``StableDiffusion3Pipeline.__call__``): the transformer is called with ``timestep = sigma *
1000`` (the scheduler's timesteps) and its output is the flow velocity ``noise - x_0`` as is; the scheduler step
is ``x + (sigma_next - sigma) * v``. So ``velocity(x_t, t) = transformer(x_t, timestep=1000 t)``.

Editing: SD3 has no source-image input. An edit student gets one as extra input channels on the patch embedding
(the source latents concatenated on channels, InstructPix2Pix style); the new weights start at zero, so the
widened model's outputs equal the base model's at step 0. The widened patch embedding is trained in full (it is
small) and exported next to the LoRA (``danceopd_edit_weights.safetensors``); the stock diffusers SD3 pipeline
cannot take a source image, so such students are sampled through danceopd (``danceopd edit --pipeline``).
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from ...registry import register_family
from ...world import SamplingConfig
from ..backend import DiffusersBackend, dynamic_kwargs, stack_entries
from ..family import DiffusersFamily
from ..options import unwrap


class SD3Backend(DiffusersBackend):
    name = "sd3"

    @property
    def is_edit(self) -> bool:
        return self.family.is_edit_transformer(self.net)

    def encode_text(self, prompts, with_source):
        pipe, msl = self.shared.pipe, self.opts.max_sequence_length

        def compute(keys):
            pe, _, pooled, _ = pipe.encode_prompt(prompt=[k[2] for k in keys], prompt_2=None, prompt_3=None,
                                                  device=self.device, do_classifier_free_guidance=False,
                                                  max_sequence_length=msl)
            return [(pe[i], pooled[i]) for i in range(len(keys))]

        ctx, pooled = stack_entries(self.shared.cached([("sd3", msl, p) for p in prompts], compute))
        return {"ctx": ctx, "pooled": pooled}

    def scheduler_kwargs(self, n):
        sched = self.shared.pipe.scheduler
        if sched.config.get("use_dynamic_shifting", None):
            s = self.resolution // self.shared.vae_scale // self.net.config.patch_size
            return {"num_inference_steps": n, **dynamic_kwargs(sched, s * s, n, default_max_shift=1.16)}
        return {"num_inference_steps": n}

    def forward(self, model, x_t, t, cond):
        net, dt = unwrap(model), self.compute_dtype
        h = x_t
        if self.family.is_edit_transformer(net):
            if cond.source is None:
                src = torch.zeros_like(x_t)
            else:
                src = cond.source.to(x_t.dtype) * cond.source_mask.view(-1, 1, 1, 1).to(x_t.dtype)
            h = torch.cat([x_t, src], dim=1)
        return model(hidden_states=h.to(dt), timestep=t * 1000.0, encoder_hidden_states=cond.text["ctx"].to(dt),
                     pooled_projections=cond.text["pooled"].to(dt), return_dict=False)[0]


class SD3Family(DiffusersFamily):
    name = "sd3"
    pipeline_attr = "StableDiffusion3Pipeline"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    transformer_class = "SD3Transformer2DModel"
    default_sampling = SamplingConfig(steps=28, text_scale=7.0)
    backend_cls = SD3Backend
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def is_edit_transformer(self, transformer) -> bool:
        tr = unwrap(transformer)
        return tr.pos_embed.proj.in_channels == 2 * tr.out_channels

    @torch.no_grad()
    def make_edit(self, transformer):
        tr = unwrap(transformer)
        proj = tr.pos_embed.proj
        c = proj.in_channels
        new = torch.nn.Conv2d(2 * c, proj.out_channels, kernel_size=proj.kernel_size, stride=proj.stride,
                              padding=proj.padding, bias=proj.bias is not None)
        new.to(device=proj.weight.device, dtype=proj.weight.dtype)
        new.weight.zero_()
        new.weight[:, :c] = proj.weight
        if proj.bias is not None:
            new.bias.copy_(proj.bias)
        new.requires_grad_(proj.weight.requires_grad)
        tr.pos_embed.proj = new
        tr.register_to_config(in_channels=2 * c)
        return transformer

    def edit_parameters(self, transformer):
        tr = unwrap(transformer)
        if not self.is_edit_transformer(tr):
            return {}
        return {f"pos_embed.proj.{n}": p for n, p in tr.pos_embed.proj.named_parameters()}

    @torch.no_grad()
    def load_edit_weights(self, transformer, path):
        if not self.is_edit_transformer(transformer):
            transformer = self.make_edit(transformer)
        proj = unwrap(transformer).pos_embed.proj
        for k, v in load_file(str(path)).items():
            getattr(proj, k.rsplit(".", 1)[-1]).copy_(v.to(proj.weight.dtype))
        return transformer


register_family(SD3Family())
