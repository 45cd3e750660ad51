import json

import numpy as np
import pytest

from danceopd.world import (
    BUCKETS,
    DEFAULT_WORLD,
    EDIT_CATEGORIES,
    T2I_CATEGORIES,
    Scene,
    WorldConfig,
    WorldStream,
    apply_style,
    check_constraints,
    coverage,
    edit_region_mask,
    make_edit,
    make_t2i,
    render,
    sample_example,
)
from danceopd.world.sampler import Example

CFG = DEFAULT_WORLD


def test_vocabulary_sizes():
    assert len(CFG.shapes) >= 4 and len(CFG.colors) >= 6 and len(CFG.backgrounds) >= 5 and len(CFG.styles) >= 4
    assert "diamond" not in CFG.shapes  # reads as round at 7 px
    assert not ({"pink", "cyan"} & set(CFG.colors))  # confused with red / blue by small models


def test_bad_vocabulary_rejected():
    with pytest.raises(ValueError, match="unknown shape"):
        WorldConfig(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="resolution"):
        WorldConfig(resolution=48)


@pytest.mark.parametrize("res", [32, 64])
def test_render_deterministic_same_bytes(res):
    a = WorldStream(CFG, "edit", seed=7, resolution=res).batch(16)
    b = WorldStream(CFG, "edit", seed=7, resolution=res).batch(16)
    assert a.target.shape == (16, res, res, 3) and a.target.dtype == np.uint8
    assert a.target.tobytes() == b.target.tobytes() and a.source.tobytes() == b.source.tobytes()
    assert a.prompts == b.prompts
    c = WorldStream(CFG, "edit", seed=8, resolution=res).batch(16)
    assert c.target.tobytes() != a.target.tobytes()


def test_stream_state_roundtrip():
    s = WorldStream(CFG, "t2i", seed=3)
    s.batch(5)
    state = json.loads(json.dumps(s.state_dict()))
    want = s.batch(4)
    s2 = WorldStream(CFG, "t2i", seed=99)
    s2.load_state_dict(state)
    got = s2.batch(4)
    assert got.prompts == want.prompts and got.target.tobytes() == want.target.tobytes()


def test_category_weights_shift_the_stream_and_resume_exactly():
    from danceopd.world.sampler import category_probs

    p = category_probs("t2i", {"position": 4, "color_attr": 4})
    assert p.sum() == pytest.approx(1.0) and p[T2I_CATEGORIES.index("position")] == pytest.approx(4 / 12)
    s = WorldStream(CFG, "t2i", seed=3, category_weights={"position": 4, "color_attr": 4})
    n = 3000
    counts = {c: 0 for c in T2I_CATEGORIES}
    for e in s.examples(n):
        counts[e.raw_task] += 1
    assert counts["position"] / n == pytest.approx(1 / 3, abs=0.03)
    assert counts["single_object"] / n == pytest.approx(1 / 12, abs=0.02)
    only = WorldStream(CFG, "t2i", seed=3, category_weights={c: 0 for c in T2I_CATEGORIES if c != "counting"})
    assert {e.raw_task for e in only.examples(50)} == {"counting"}
    state = json.loads(json.dumps(s.state_dict()))
    want = s.batch(4)
    s2 = WorldStream(CFG, "t2i", seed=99, category_weights={"position": 4, "color_attr": 4})
    s2.load_state_dict(state)
    assert s2.batch(4).prompts == want.prompts
    for bad in ({"subject_add": 1.0}, {"position": -1.0}, {"position": float("nan")}, {c: 0 for c in T2I_CATEGORIES}):
        with pytest.raises(ValueError):
            category_probs("t2i", bad)


def test_jitter_makes_images_diverse():
    rng = np.random.default_rng(0)
    imgs = {render(make_t2i(rng, CFG, "colors")[2], CFG).tobytes() for _ in range(50)}
    assert len(imgs) == 50


def test_objects_visible_on_every_background_and_style():
    from danceopd.world.scene import Obj

    for bg in CFG.backgrounds:
        for st in (None, *CFG.styles):
            empty = render(Scene(bg, st), CFG)
            for c in CFG.colors:
                img = render(Scene(bg, st, (Obj("square", c, 4),)), CFG)
                diff = np.abs(img.astype(int) - empty.astype(int)).sum(-1)
                assert diff.max() > 60, (bg, st, c)


@pytest.mark.parametrize("cat", T2I_CATEGORIES)
def test_t2i_scene_satisfies_its_constraints(cat):
    rng = np.random.default_rng(1)
    for _ in range(100):
        text, cons, scene = make_t2i(rng, CFG, cat)
        assert text and check_constraints(cons, scene.layout())


def test_constraint_checker_rejects_violations():
    rng = np.random.default_rng(2)
    text, cons, scene = make_t2i(rng, CFG, "position")
    a, b = scene.objects[0], scene.objects[1]
    assert check_constraints(cons, scene.layout())
    # swapping the two objects' slots breaks the relation
    swapped = scene.with_objects([
        type(a)(a.shape, a.color, b.slot), type(b)(b.shape, b.color, a.slot)])
    assert not check_constraints(cons, swapped.layout())
    text, cons, scene = make_t2i(rng, CFG, "counting")
    n = cons["objects"][0]["count"]
    fewer = scene.with_objects(scene.objects[: n - 1])
    assert not check_constraints(cons, fewer.layout())
    text, cons, scene = make_t2i(rng, CFG, "color_attr")
    o = scene.objects[0]
    other = next(c for c in CFG.colors if c != o.color)
    recolored = scene.with_objects([type(o)(o.shape, other, o.slot), *scene.objects[1:]])
    assert not check_constraints(cons, recolored.layout())


def test_prompts_are_varied():
    rng = np.random.default_rng(3)
    for cat in T2I_CATEGORIES:
        texts = {make_t2i(rng, CFG, cat)[0] for _ in range(60)}
        assert len(texts) > 10, cat
    for cat in EDIT_CATEGORIES:
        heads = {make_edit(rng, CFG, cat)[0].split()[0] for _ in range(60)}
        assert len(heads) >= 2, cat


@pytest.mark.parametrize("res", [32, 64])
@pytest.mark.parametrize("cat", EDIT_CATEGORIES)
def test_edit_changes_only_the_edited_region(cat, res):
    rng = np.random.default_rng(4)
    for _ in range(40):
        text, src, tgt, info = make_edit(rng, CFG, cat)
        a, b = render(src, CFG, res), render(tgt, CFG, res)
        changed = (a != b).any(-1)
        assert changed.any(), (cat, text)  # an edit always changes something
        if cat == "style_change":
            plain = Scene(src.background, None, src.objects)
            assert tgt.style != src.style
            assert b.tobytes() == render(Scene(tgt.background, tgt.style, tgt.objects), CFG, res).tobytes()
            if tgt.style != "outline":
                assert b.tobytes() == apply_style(render(plain, CFG, res), tgt.style).tobytes()
            assert tgt.layout()[2] == src.layout()[2] and tgt.background == src.background
            continue
        if cat == "background_change":
            cov = coverage(src, CFG, res)
            assert not (changed & (cov == 255)).any()  # object interiors untouched
            assert changed[cov == 0].all()  # every pure-background pixel changed
            assert tgt.layout()[2] == src.layout()[2] and tgt.style == src.style
            continue
        slot_objs = [o for o in (*src.objects, *tgt.objects) if o.slot in info["slots"]]
        region = edit_region_mask(slot_objs, src.grid, res, CFG.supersample)
        assert not (changed & ~region).any(), (cat, text)
        # untouched objects keep exactly the same jitter
        keep_s = {o.slot: o for o in src.objects if o.slot not in info["slots"]}
        keep_t = {o.slot: o for o in tgt.objects if o.slot not in info["slots"]}
        assert keep_s == keep_t
        assert (src.background, src.style) == (tgt.background, tgt.style)


def test_edit_targets_match_instruction_semantics():
    rng = np.random.default_rng(5)
    for _ in range(50):
        text, src, tgt, info = make_edit(rng, CFG, "subject_add")
        assert len(tgt.objects) == len(src.objects) + 1
        text, src, tgt, info = make_edit(rng, CFG, "subject_remove")
        assert len(tgt.objects) == len(src.objects) - 1
        text, src, tgt, info = make_edit(rng, CFG, "color_alter")
        s = info["slots"][0]
        assert src.slot_map()[s].color != tgt.slot_map()[s].color and src.slot_map()[s].color in text
        assert tgt.slot_map()[s].color in text.split()[-1] or tgt.slot_map()[s].color in text


@pytest.mark.parametrize("bucket", list(BUCKETS))
def test_caption_dict_roundtrip(bucket):
    rng = np.random.default_rng(6)
    for _ in range(30):
        ex = sample_example(rng, CFG, bucket)
        back = Example.from_caption(ex.task, ex.prompt, json.loads(ex.caption_json()))
        assert back.target.layout() == ex.target.layout()
        assert back.raw_task == ex.raw_task and back.constraints == ex.constraints
        if ex.source is not None:
            assert back.source.layout() == ex.source.layout()
        assert render(back.target, CFG).tobytes() == render(ex.target, CFG).tobytes()
        if ex.constraints:
            assert check_constraints(back.constraints, back.target.layout())


def test_buckets():
    assert set(BUCKETS) == {"t2i", "local_edit", "global_edit", "edit"}
    assert set(BUCKETS["edit"]) == set(BUCKETS["local_edit"]) | set(BUCKETS["global_edit"])
    rng = np.random.default_rng(0)
    seen = {sample_example(rng, CFG, "local_edit").raw_task for _ in range(200)}
    assert seen == set(BUCKETS["local_edit"])


def test_tokenizer_covers_world_text():
    from danceopd.world import WorldTokenizer

    tok = WorldTokenizer()
    rng = np.random.default_rng(0)
    for b in ("t2i", "edit"):
        for _ in range(300):
            ids = tok.tokenize(sample_example(rng, CFG, b).prompt)
            assert ids[0] == 1 and 2 not in ids  # bos first, no unknown words
    assert tok.encode([""])[0, 0] == 1  # empty prompt is not all padding
