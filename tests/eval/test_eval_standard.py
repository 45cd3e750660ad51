"""Standard metrics plumbing, offline: torchmetrics FID / CLIPScore and lpips driven by random-init networks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn

from danceopd.eval.imageops import judge_input, to_float
from danceopd.eval.judge import load_judge
from danceopd.eval.metrics import frechet_distance
from danceopd.eval.nets import WorldClip
from danceopd.eval.standard import (
    TorchmetricsClipAdapter,
    clip_score_torchmetrics,
    fid_torchmetrics,
    lpips_package,
    standard_metrics,
)
from danceopd.world import DEFAULT_WORLD, WorldTokenizer, render, sample_example


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    exs = [sample_example(rng, DEFAULT_WORLD, "t2i") for _ in range(n)]
    return np.stack([render(e.target, DEFAULT_WORLD) for e in exs]), [e.prompt for e in exs]


class TinyFeatures(nn.Module):
    num_features = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


class JudgeFeatures(nn.Module):
    def __init__(self, judge):
        super().__init__()
        self.judge = judge
        self.num_features = judge.net.feature_dim

    def forward(self, x):
        from danceopd.eval.nets import normalize_input

        return self.judge.net.backbone(normalize_input(judge_input(x)))[-1].mean(dim=(2, 3))


def test_torchmetrics_fid_matches_our_frechet_distance():
    real, _ = _images(64, 0)
    fake = np.clip(real.astype(int) + np.random.default_rng(1).integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
    net = TinyFeatures().eval()
    tm = fid_torchmetrics(real, fake, net)
    with torch.no_grad():
        ours = frechet_distance(net(to_float(real)).double().numpy(), net(to_float(fake)).double().numpy())
    assert tm == pytest.approx(ours, rel=1e-3, abs=1e-6)
    assert fid_torchmetrics(real, real, net) == pytest.approx(0.0, abs=1e-4)
    # with the judge's backbone as the feature network torchmetrics reproduces the suite's FID
    j = load_judge()
    assert fid_torchmetrics(real, fake, JudgeFeatures(j)) == pytest.approx(
        frechet_distance(j.features(real), j.features(fake)), rel=1e-3)


def test_torchmetrics_clipscore_with_random_init_world_clip():
    images, prompts = _images(12, 2)
    tok = WorldTokenizer()
    torch.manual_seed(0)
    net = WorldClip(tok.vocab_size, tok.max_len).eval()
    adapter = TorchmetricsClipAdapter(net, tok)
    got = clip_score_torchmetrics(images, prompts, lambda: (adapter, adapter.processor))
    with torch.no_grad():
        cos = (net.encode_image(to_float(images)) * net.encode_text(tok.encode(prompts))).sum(-1)
    assert got == pytest.approx(max(float(100 * cos.mean()), 0.0), rel=1e-4, abs=1e-4)


def test_lpips_package_with_random_init_network():
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("lpips is not installed (its torchvision dependency needs a matching torch build)")
    import lpips

    a, _ = _images(4, 3)
    net = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval()
    d = lpips_package(a, a[::-1].copy(), net)
    assert d.shape == (4,) and np.all(np.isfinite(d))
    assert np.allclose(lpips_package(a, a, net), 0.0, atol=1e-6)


def test_standard_metrics_report_null_with_reason_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache: nothing is local
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    imgs, prompts = _images(4, 4)
    out = standard_metrics(imgs, imgs, prompts, imgs, imgs)
    assert set(out) == {"fid_inception", "clip_score_openai", "lpips_alex"}
    for v in out.values():
        assert v["value"] is None and isinstance(v["reason"], str) and v["reason"]
    none = standard_metrics(None, None, None, None, None)
    assert all(v["value"] is None for v in none.values())


def test_world_clip_prefers_the_right_text():
    from danceopd.eval.clip import load_clip
    from danceopd.eval.scenes import scene_caption

    clip = load_clip()
    rng = np.random.default_rng(20261126)
    exs = [sample_example(rng, DEFAULT_WORLD, "t2i") for _ in range(200)]
    imgs = np.stack([render(e.target, DEFAULT_WORLD) for e in exs])
    own = clip.cosine(imgs, [e.prompt for e in exs])
    other = clip.cosine(imgs, [e.prompt for e in exs[1:] + exs[:1]])
    assert own.mean() > other.mean() + 0.15 and (own > other).mean() > 0.8
    edits = [sample_example(rng, DEFAULT_WORLD, "edit") for _ in range(100)]
    tgt = np.stack([render(e.target, DEFAULT_WORLD) for e in edits])
    caps = [scene_caption(e.target)[0] for e in edits]
    assert clip.cosine(tgt, caps).mean() > clip.cosine(tgt, caps[1:] + caps[:1]).mean() + 0.15
