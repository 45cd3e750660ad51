"""Our (x_t, t, v) conventions against each diffusers pipeline's own: one Euler step with backend.velocity equals
one scheduler.step of the pipeline (transformer called exactly as the pipeline calls it), whole samplings equal
the pipelines' (with and without CFG, Kontext with a source image), zero-initialized SD3 edit channels, and
Z-Image's omni edit path."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from danceopd.backends.diffusers import DiffusersOptions  # noqa: E402
from danceopd.backends.registry import get_family  # noqa: E402
from danceopd.core.flow import euler_update  # noqa: E402

RES, MSL = 64, 32
PROMPTS = ["a red book on a table", "blue sky"]


def _backend(family, base):
    fam = get_family(family).configure(DiffusersOptions(resolution=RES, max_sequence_length=MSL))
    return fam, fam.load_teacher(f"{family}:{base}")


def _pipe(fam, base):
    pipe = fam.pipeline_cls.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_model_output(family, pipe, x, sched_t):
    """The velocity exactly as each pipeline's denoising loop computes it (no CFG), from its own sources."""
    B = len(x)
    with torch.no_grad():
        if family == "sd3":
            pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=MSL)
            return pipe.transformer(hidden_states=x, timestep=sched_t.expand(B), encoder_hidden_states=pe,
                                    pooled_projections=pooled, return_dict=False)[0]
        if family == "zimage":
            pe, _ = pipe.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False, max_sequence_length=MSL)
            timestep = (1000 - sched_t.expand(B)) / 1000
            out = pipe.transformer(list(x.unsqueeze(2).unbind(0)), timestep, pe, return_dict=False)[0]
            return -torch.stack([o.float() for o in out]).squeeze(2)
        pe, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=MSL)
        h, w = x.shape[2:]
        lat = pipe._pack_latents(x, B, x.shape[1], h, w)
        ids = pipe._prepare_latent_image_ids(B, h // 2, w // 2, x.device, x.dtype)
        guidance = torch.full([1], 2.5, dtype=torch.float32).expand(B)
        out = pipe.transformer(hidden_states=lat, timestep=sched_t.expand(B) / 1000, guidance=guidance,
                               pooled_projections=pooled, encoder_hidden_states=pe, txt_ids=text_ids, img_ids=ids,
                               return_dict=False)[0]
        return pipe._unpack_latents(out, h * 8, w * 8, 8)


@pytest.mark.parametrize("family", ["sd3", "zimage", "flux_kontext"])
def test_one_euler_step_equals_scheduler_step(pipes, family):
    fam, be = _backend(family, pipes[family]["base"])
    pipe = _pipe(fam, pipes[family]["base"])
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(**be.scheduler_kwargs(4))
    x = torch.randn(be.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(0))
    i = 1
    sched_t = sched.timesteps[i]
    sched.set_begin_index(i)
    ref = sched.step(_pipeline_model_output(family, pipe, x, sched_t), sched_t, x, return_dict=False)[0]
    ts = be.timesteps(4)                        # the scheduler's sigmas, in our t
    assert torch.allclose(ts * 1000, torch.cat([sched.timesteps, torch.zeros(1)]).float(), atol=1e-3)
    with torch.no_grad():
        v = be.velocity(x, ts[i].expand(len(x)), be.encode(PROMPTS))
    ours = euler_update(x, v, ts[i], ts[i + 1])
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def _pipeline_latents(family, pipe, noise, steps, scale, image_latents=None):
    kw = dict(prompt=list(PROMPTS), num_inference_steps=steps, output_type="latent", max_sequence_length=MSL,
              height=RES, width=RES)
    with torch.no_grad():
        if family == "sd3":
            return pipe(latents=noise, guidance_scale=scale, **kw).images
        if family == "zimage":   # Z-Image's CFG is pos + g (pos - neg): our text_scale 1 + g
            return pipe(latents=noise, guidance_scale=scale - 1.0, **kw).images
        from danceopd.backends.diffusers.families.flux_kontext import pack, unpack

        extra = {"negative_prompt": [""] * len(PROMPTS), "true_cfg_scale": scale} if scale != 1.0 else {}
        out = pipe(latents=pack(noise), image=image_latents, guidance_scale=2.5, max_area=RES * RES, **extra,
                   **kw).images
        return unpack(out, noise.shape[2], noise.shape[3])


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("family", ["sd3", "zimage", "flux_kontext"])
def test_sampling_equals_pipeline(pipes, family, scale):
    fam, be = _backend(family, pipes[family]["base"])
    pipe = _pipe(fam, pipes[family]["base"])
    noise = torch.randn(be.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(1))
    ref = _pipeline_latents(family, pipe, noise, 3, scale)
    ours = be.sample_latents(PROMPTS, None, noise, steps=3, text_scale=scale)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_kontext_edit_tokens_equal_pipeline(pipes):
    fam, be = _backend("flux_kontext", pipes["flux_kontext"]["base"])
    pipe = _pipe(fam, pipes["flux_kontext"]["base"])
    g = torch.Generator().manual_seed(2)
    src = torch.rand((len(PROMPTS), 3, RES, RES), generator=g) * 2 - 1
    noise = torch.randn(be.latent_shape(len(PROMPTS)), generator=g)
    image_latents = be.shared.encode_images(src)            # (mode - shift) * scale, as the pipeline encodes
    ref = _pipeline_latents("flux_kontext", pipe, noise, 2, 1.0, image_latents=image_latents)
    ours = be.sample_latents(PROMPTS, src, noise, steps=2)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    t2i = be.sample_latents(PROMPTS, None, noise, steps=2)
    assert (t2i - ours).abs().max() > 1e-3                   # the source tokens matter


def test_sd3_zero_init_edit_channels_equal_base(pipes):
    fam, be = _backend("sd3", pipes["sd3"]["base"])
    assert not be.is_edit
    student = fam.build_student(pipes["sd3"]["t2i"], [be], needs_edit=True, merge=None, freeze_text=True)
    assert student.is_edit and student.net.config.in_channels == 32
    g = torch.Generator().manual_seed(3)
    x = torch.randn(be.latent_shape(2), generator=g)
    t = torch.tensor([0.9, 0.3])
    src = torch.rand((2, 3, RES, RES), generator=g) * 2 - 1
    with torch.no_grad():
        v_base = be.velocity(x, t, be.encode(PROMPTS))
        v_edit = student.velocity(x, t, student.encode(PROMPTS, src))
        v_drop = student.velocity(x, t, student.encode(PROMPTS, src, drop_source=torch.tensor([True, False])))
    assert torch.allclose(v_edit, v_base, atol=1e-5)
    assert torch.allclose(v_drop, v_base, atol=1e-5)
    params = fam.edit_parameters(student.net)
    assert set(params) == {"pos_embed.proj.weight", "pos_embed.proj.bias"}


def test_zimage_omni_edit_path(pipes):
    fam, be = _backend("zimage", pipes["zimage"]["base"])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(be.latent_shape(2), generator=g)
    t = torch.tensor([0.8, 0.4])
    src = torch.rand((2, 3, RES, RES), generator=g) * 2 - 1
    with torch.no_grad():
        v_t2i = be.velocity(x, t, be.encode(PROMPTS))
        v_edit = be.velocity(x, t, be.encode(PROMPTS, src))
        mixed = be.velocity(x, t, be.encode(PROMPTS, src, drop_source=torch.tensor([False, True])))
    assert v_edit.shape == x.shape and torch.isfinite(v_edit).all()
    assert (v_edit - v_t2i).abs().max() > 1e-4
    # a dropped source is the plain T2I call (basic prompt format), row by row
    assert torch.allclose(mixed[1], v_t2i[1], atol=1e-5) and torch.allclose(mixed[0], v_edit[0], atol=1e-5)


def test_condition_caches_hit(pipes):
    _, be = _backend("sd3", pipes["sd3"]["base"])
    be.shared.text_cache.d.clear()
    be.encode(PROMPTS)
    n = len(be.shared.text_cache.d)
    c1 = be.encode(PROMPTS + PROMPTS[:1])
    assert len(be.shared.text_cache.d) == n == 2
    c2 = be.encode(PROMPTS[:1])
    assert torch.equal(c1.text["ctx"][2], c2.text["ctx"][0])
