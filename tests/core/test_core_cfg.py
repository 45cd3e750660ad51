import pytest
import torch

from danceopd.core import cfg_combine, cfg_combine_edit


def _vs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, 3, generator=g, dtype=torch.float64) for _ in range(n)]


def test_cfg_endpoints_and_formula():
    v_c, v_u = _vs(2)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 1.0), v_c)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 0.0), v_u)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 4.5), v_u + 4.5 * (v_c - v_u))


def test_cfg_is_affine_in_alpha_and_linear_in_fields():
    v_c, v_u, w = _vs(3, seed=1)
    a, b = 2.0, 7.0
    mid = cfg_combine(v_c, v_u, (a + b) / 2)
    torch.testing.assert_close(mid, (cfg_combine(v_c, v_u, a) + cfg_combine(v_c, v_u, b)) / 2)
    # linear in (v_cond, v_uncond) jointly
    torch.testing.assert_close(cfg_combine(v_c + 2 * w, v_u + 2 * w, 3.0), cfg_combine(v_c, v_u, 3.0) + 2 * w)


def test_cfg_per_sample_alpha():
    v_c, v_u = _vs(2, seed=2)
    alpha = torch.tensor([0.0, 1.0, 3.0, -1.0])
    out = cfg_combine(v_c, v_u, alpha)
    for b in range(4):
        torch.testing.assert_close(out[b], v_u[b] + alpha[b].item() * (v_c[b] - v_u[b]))
    with pytest.raises(ValueError):
        cfg_combine(v_c, v_u, torch.ones(3))


def test_edit_guidance_reductions():
    v_full, v_img, v_u = _vs(3, seed=3)
    torch.testing.assert_close(cfg_combine_edit(v_full, v_img, v_u, 1.0, 1.0), v_full)
    torch.testing.assert_close(cfg_combine_edit(v_full, v_img, v_u, 0.0, 0.0), v_u)
    # text_scale = 0: plain CFG on the image condition
    torch.testing.assert_close(cfg_combine_edit(v_full, v_img, v_u, 0.0, 1.7), cfg_combine(v_img, v_u, 1.7))
    # image_scale = 1: plain CFG on the instruction
    torch.testing.assert_close(
        cfg_combine_edit(v_full, v_img, v_u, 7.5, 1.0), cfg_combine(v_full, v_img, 7.5)
    )
    # full formula
    torch.testing.assert_close(
        cfg_combine_edit(v_full, v_img, v_u, 5.0, 1.5),
        v_u + 1.5 * (v_img - v_u) + 5.0 * (v_full - v_img),
    )
    # v_img == v_uncond collapses to one-condition CFG with the text scale
    torch.testing.assert_close(cfg_combine_edit(v_full, v_u, v_u, 4.0, 2.0), cfg_combine(v_full, v_u, 4.0))
