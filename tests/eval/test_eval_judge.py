"""The judge itself: shipped, small, versioned, and accurate on scenes it never saw (a seed stream disjoint from
the training streams)."""

from __future__ import annotations

import numpy as np
import pytest

from danceopd.eval.judge import load_judge
from danceopd.eval.nets import (
    ASSET_DIR,
    CLIP_FILE,
    CLIP_VERSION,
    CRITIC_FILE,
    JUDGE_FILE,
    JUDGE_VERSION,
    read_net_file,
)
from danceopd.eval.training import CALIB_STREAM, TRAIN_STREAM
from danceopd.eval.validity import judge_accuracy
from danceopd.world import DEFAULT_WORLD, render, sample_example

FRESH_SEED = 20261125  # plain default_rng(seed): training draws from default_rng((TRAIN_STREAM + k, seed))


@pytest.mark.parametrize("name", [JUDGE_FILE, CRITIC_FILE, CLIP_FILE])
def test_shipped_weights_small_fp16_versioned(name):
    p = ASSET_DIR / name
    assert p.is_file() and p.stat().st_size < 2_000_000
    tensors, meta = read_net_file(p)
    assert meta["version"] == (CLIP_VERSION if name == CLIP_FILE else JUDGE_VERSION)
    assert meta["seed"] == 0 and meta["steps"] > 0
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes <= {"F16", "I64"}, dtypes


def test_fresh_seed_is_not_a_training_stream():
    assert FRESH_SEED not in (TRAIN_STREAM, TRAIN_STREAM + 1, TRAIN_STREAM + 2, CALIB_STREAM)


def test_judge_fresh_seed_accuracy_32px():
    acc = judge_accuracy(load_judge(), DEFAULT_WORLD, n=3000, seed=FRESH_SEED)
    slots = [acc[f"slot_{i}"] for i in range(DEFAULT_WORLD.n_slots)]
    assert min(slots) >= 0.99, acc
    assert acc["background"] >= 0.99 and acc["style"] >= 0.99, acc
    assert acc["layout"] >= 0.97, acc


def test_judge_fresh_seed_accuracy_64px_box_downsampled():
    acc = judge_accuracy(load_judge(), DEFAULT_WORLD, n=1000, seed=FRESH_SEED + 1, resolution=64)
    assert acc["slot_min"] >= 0.99 and acc["background"] >= 0.99 and acc["style"] >= 0.98, acc


def test_reading_matches_scene_layout_type_and_run_is_consistent():
    j = load_judge()
    rng = np.random.default_rng(FRESH_SEED + 2)
    exs = [sample_example(rng, DEFAULT_WORLD, "t2i") for _ in range(8)]
    imgs = np.stack([render(e.target, DEFAULT_WORLD) for e in exs])
    r = j.run(imgs)
    assert len(r.layouts) == 8 and r.quality.shape == (8,) and r.features.shape == (8, j.net.feature_dim)
    for lay in r.layouts:
        assert isinstance(lay, tuple) and len(lay) == 3 and len(lay[2]) == DEFAULT_WORLD.n_slots
    np.testing.assert_allclose(j.features(imgs), r.features, rtol=1e-5, atol=1e-6)
    assert j.lpips(imgs, imgs).max() == 0.0
    assert (j.lpips(imgs, imgs[::-1]) > 0).sum() >= 6
    assert j.pq(imgs).min() > 8.0
