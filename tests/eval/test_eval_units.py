"""Formulas and building blocks: SC, O, the Frechet distance, fresh scenes for a prompt, the calibration
generators, argument validation, deterministic training of the eval networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from danceopd.errors import UserError
from danceopd.eval.generators import (
    DegradeGenerator,
    IdentityGenerator,
    NoiseGenerator,
    OracleGenerator,
    parse_degrade_level,
    resolve_generator,
)
from danceopd.eval.imageops import degrade
from danceopd.eval.metrics import clip_score, edit_scores, frechet_distance, overall
from danceopd.eval.scenes import scene_for_constraints
from danceopd.eval.suite import check_args, edit_examples, t2i_plan, t2i_prompts
from danceopd.world import DEFAULT_WORLD, check_constraints, render, sample_example


def _layout(bg="black", style=None, **slots):
    s = [None] * 9
    for k, v in slots.items():
        s[int(k[1:])] = v
    return (bg, style, tuple(s))


def test_edit_scores_success_and_over_editing():
    src = _layout(s0=("circle", "red"), s4=("star", "blue"))
    tgt = _layout(s0=("circle", "red"), s4=("star", "blue"), s8=("square", "green"))
    assert edit_scores(tgt, src, tgt) == {"success": 10.0, "keep": 10.0, "sc": 10.0}
    assert edit_scores(src, src, tgt)["sc"] == 0.0  # nothing done
    over = _layout("white", s0=("circle", "red"), s4=("star", "blue"), s8=("square", "green"))
    e = edit_scores(over, src, tgt)  # right edit, background changed too: 1 of 10 untouched elements off
    assert e["success"] == 10.0 and e["keep"] == pytest.approx(9.0) and e["sc"] == pytest.approx(9.0)
    assert overall(9.0, 4.0) == pytest.approx(6.0) and overall(0.0, 10.0) == 0.0


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifted = frechet_distance(a, a + 3.0)
    assert shifted == pytest.approx(9.0 * 8, rel=1e-6)
    b = rng.normal(size=(400, 8)) * 2.0
    # isotropic Gaussians: (s_a - s_b)^2 per dimension
    assert frechet_distance(a, b) == pytest.approx(8 * (1 - 2) ** 2, rel=0.25)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_clip_score_floor():
    np.testing.assert_allclose(clip_score(np.array([0.5, -0.2, 1.0])), [50.0, 0.0, 100.0])


def test_scene_for_constraints_satisfies_prompt_and_varies():
    rng = np.random.default_rng(1)
    for _ in range(300):
        ex = sample_example(rng, DEFAULT_WORLD, "t2i")
        sc = scene_for_constraints(ex.constraints, rng, DEFAULT_WORLD)
        assert check_constraints(ex.constraints, sc.layout()), (ex.prompt, sc)
    ex = sample_example(np.random.default_rng(2), DEFAULT_WORLD, "t2i", raw_task="single_object")
    scenes = {scene_for_constraints(ex.constraints, np.random.default_rng(k), DEFAULT_WORLD) for k in range(5)}
    assert len(scenes) == 5


def test_sets_are_prefix_stable_and_seeded():
    a, b = t2i_prompts(3, 4), t2i_prompts(3, 9)
    assert [e.prompt for e in a["counting"]] == [e.prompt for e in b["counting"][:4]]
    assert [e.prompt for e in t2i_prompts(4, 4)["counting"]] != [e.prompt for e in a["counting"]]
    e1, e2 = edit_examples(3, 5), edit_examples(3, 2)
    assert [e.prompt for e in e1["style_change"][:2]] == [e.prompt for e in e2["style_change"]]
    assert t2i_plan(100) == (25, 4) and t2i_plan(1) == (1, 1) and t2i_plan(5) == (2, 4)


@pytest.mark.parametrize("res", [32, 64])
def test_calibration_generators_contract(res):
    cfg = DEFAULT_WORLD.with_resolution(res)
    t2i = t2i_prompts(0, 2, cfg)["position"]
    edits = edit_examples(0, 3, cfg)["subject_add"]
    src = np.stack([render(e.source, cfg, res) for e in edits])
    for gen in (OracleGenerator(res), IdentityGenerator(res), NoiseGenerator(res), DegradeGenerator(0.5, res)):
        for exs, s in ((t2i, None), (edits, src)):
            out = gen.generate(exs, s, seed=7)
            assert out.dtype == np.uint8 and out.shape == (len(exs), res, res, 3)
            np.testing.assert_array_equal(out, gen.generate(exs, s, seed=7))
    oracle_edit = OracleGenerator(res).generate(edits, src, 0)
    np.testing.assert_array_equal(oracle_edit, np.stack([render(e.target, cfg, res) for e in edits]))
    np.testing.assert_array_equal(IdentityGenerator(res).generate(edits, src, 0), src)
    o1, o2 = OracleGenerator(res).generate(t2i, None, 1), OracleGenerator(res).generate(t2i, None, 2)
    assert not np.array_equal(o1, o2)  # fresh scenes per seed


def test_degrade_levels_and_parse():
    assert parse_degrade_level("1") == 0.25 and parse_degrade_level("4") == 1.0
    assert parse_degrade_level("1.0") == 1.0 and parse_degrade_level("0.3") == 0.3
    for bad in ("5", "-0.1", "1.5", "x", "nan"):
        with pytest.raises(UserError):
            parse_degrade_level(bad)
    img = render(sample_example(np.random.default_rng(0), DEFAULT_WORLD, "t2i").target, DEFAULT_WORLD)[None]
    np.testing.assert_array_equal(degrade(img, 0.0, np.random.default_rng(0)), img)
    errs = [np.abs(degrade(img, lv, np.random.default_rng(0)).astype(int) - img).mean() for lv in (0.25, 0.5, 1.0)]
    assert errs[0] < errs[1] < errs[2]


def test_resolve_generator_errors():
    assert resolve_generator("oracle", 32).name == "oracle"
    assert resolve_generator("degrade:2", 64).name == "degrade:2"
    for spec in ("nope", "/no/such/checkpoint.safetensors"):
        with pytest.raises(UserError, match="unknown model .*calibration generator"):
            resolve_generator(spec, 32)
    with pytest.raises(UserError, match="degrade"):
        resolve_generator("degrade", 32)


def test_check_args():
    check_args("all", 1, 32)
    for args in (("bogus", 4, 32), ("t2i", 0, 32), ("edit", 4, 48), ("all", 4, 32, 0)):
        with pytest.raises(UserError):
            check_args(*args)


def test_training_is_deterministic():
    from danceopd.eval.training import train_clip, train_critic, train_judge

    quiet = lambda s: None  # noqa: E731
    threads = torch.get_num_threads()
    for fn in (train_judge, train_critic, train_clip):
        torch.set_num_threads(1)
        try:
            a, ma = fn(DEFAULT_WORLD, seed=5, steps=2, batch=8, log=quiet)
            b, mb = fn(DEFAULT_WORLD, seed=5, steps=2, batch=8, log=quiet)
            c, _ = fn(DEFAULT_WORLD, seed=6, steps=2, batch=8, log=quiet)
        finally:
            torch.set_num_threads(threads)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa) and ma == mb
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_preservation_counts_only_pixels_the_target_keeps():
    import numpy as np

    from danceopd.eval.metrics import PRESERVE_TOL, preservation

    src = np.zeros((3, 4, 4, 3), np.uint8)
    tgt = src.copy()
    tgt[:, 0, :] = 200                          # the edit changes row 0: 12 pixels must stay unchanged
    out = src.copy()
    out[0] = tgt[0]                             # exact edit: everything else kept
    out[1, 1, :2] = PRESERVE_TOL + 1            # 2 of the 12 kept pixels changed beyond the tolerance
    out[1, 2, :] = PRESERVE_TOL                 # within the tolerance: still kept
    out[2] = 255                                # the whole image redrawn
    np.testing.assert_allclose(preservation(out, src, tgt), [1.0, 10 / 12, 0.0])
    assert np.isnan(preservation(src[:1], src[:1], src[:1] + 1))[0]   # target changes every pixel
