"""``backend: zimage``: Z-Image (``ZImagePipeline``, ``ZImageTransformer2DModel``; diffusers ships both, tested
with 0.42.1).

Conventions (from ``ZImagePipeline.__call__``): Z-Image runs time the other way round and predicts the negated
velocity: the transformer gets ``(1000 - timestep) / 1000 = 1 - sigma`` and the pipeline feeds ``-output`` to the
scheduler step ``x + (sigma_next - sigma) * v``. So ``velocity(x_t, t) = -transformer(x_t, 1 - t)``. Its inputs
are per-sample lists (latents ``[C, 1, H, W]``, caption features of each prompt's own length); the prompt is
wrapped in the tokenizer's chat template and read from the text encoder's second-to-last hidden layer. Its CFG
``pos + g (pos - neg)`` is ours with ``text_scale = 1 + g``. The sampling grid is the pipeline's
``linspace(1, 1/n, n)`` through the scheduler (shift or resolution-dependent ``mu``).

Editing uses the transformer's omni mode (as ``ZImageOmniPipeline`` does): the source latents are a clean
condition image in the same sequence (noise mask 0, clean-time modulation) and the prompt takes the omni
format with vision markers. SigLIP image features (the Omni pipeline's second image encoder) are not used: the
transformer accepts their absence, but checkpoints trained with them may edit less well without.
"""

from __future__ import annotations

import torch

from ...registry import register_family
from ...world import SamplingConfig
from ..backend import DiffusersBackend, dynamic_kwargs, run_grouped
from ..family import DiffusersFamily


def omni_segments(prompt: str) -> list[str]:
    """The omni prompt around one condition image (ZImageOmniPipeline's format)."""
    return ["<|im_start|>user\n<|vision_start|>",
            "<|vision_end|>" + prompt + "<|im_end|>\n<|im_start|>assistant\n<|vision_start|>",
            "<|vision_end|><|im_end|>"]


class ZImageBackend(DiffusersBackend):
    name = "zimage"

    def _hidden(self, texts: list[str]) -> list[torch.Tensor]:
        pipe, msl = self.shared.pipe, self.opts.max_sequence_length
        enc = pipe.tokenizer(texts, padding="max_length", max_length=msl, truncation=True, return_tensors="pt")
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device).bool()
        h = pipe.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return [h[i][mask[i]] for i in range(len(texts))]

    def encode_text(self, prompts, with_source):
        pipe, msl = self.shared.pipe, self.opts.max_sequence_length

        def compute(keys):
            out = [None] * len(keys)
            basic = [i for i, k in enumerate(keys) if not k[2]]
            if basic:
                embs = pipe._encode_prompt(prompt=[keys[i][3] for i in basic], device=self.device,
                                           max_sequence_length=msl)
                for i, e in zip(basic, embs):
                    out[i] = e
            omni = [i for i, k in enumerate(keys) if k[2]]
            if omni:
                flat = [s for i in omni for s in omni_segments(keys[i][3])]
                embs = self._hidden(flat)
                for j, i in enumerate(omni):
                    out[i] = embs[3 * j:3 * j + 3]
            return out

        keys = [("zimage", msl, bool(s), p) for p, s in zip(prompts, with_source)]
        return {"caps": self.shared.cached(keys, compute)}

    def scheduler_kwargs(self, n):
        s = self.resolution // self.shared.vae_scale // 2
        sigmas = torch.linspace(1.0, 1 / n, n).tolist()
        return {"sigmas": sigmas, **dynamic_kwargs(self.shared.pipe.scheduler, s * s, n)}

    def forward(self, model, x_t, t, cond):
        dt = self.compute_dtype
        caps = cond.text["caps"]
        has = self.source_rows(cond, len(x_t))
        t_model = 1.0 - t

        def run(idx, omni):
            rows = idx.tolist()
            idx_d = idx.to(x_t.device)
            if omni:
                xs = [[cond.source[i].unsqueeze(1).to(dt), x_t[i].unsqueeze(1).to(dt)] for i in rows]
                out = model(xs, t_model[idx_d], [[c.to(dt) for c in caps[i]] for i in rows],
                            siglip_feats=[None] * len(rows), image_noise_mask=[[0, 1]] * len(rows),
                            return_dict=False)[0]
            else:
                out = model([x_t[i].unsqueeze(1).to(dt) for i in rows], t_model[idx_d],
                            [caps[i].to(dt) for i in rows], return_dict=False)[0]
            return -torch.stack(out).squeeze(2)

        groups = [(torch.nonzero(has).flatten(), True), (torch.nonzero(~has).flatten(), False)]
        return run_grouped(x_t, groups, run)


class ZImageFamily(DiffusersFamily):
    name = "zimage"
    pipeline_attr = "ZImagePipeline"
    pipeline_classes = ("ZImagePipeline",)
    transformer_class = "ZImageTransformer2DModel"
    default_sampling = SamplingConfig(steps=50, text_scale=6.0)   # the pipeline's guidance g is our 1 + g
    backend_cls = ZImageBackend
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]


register_family(ZImageFamily())
