"""The demo's requests without a browser: models side by side, the exact target of world edits, verdicts that
agree with the evaluation suite, unknown words flagged, uploads capped and checked."""

import numpy as np
import pytest
from PIL import Image

from danceopd.demo.core import Demo, check_upload, examples, find_runs, t2i_checks
from danceopd.demo.html import result_html
from danceopd.errors import UserError
from danceopd.eval.metrics import geneval_pass
from danceopd.world import DEFAULT_WORLD, render, sample_example


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return Demo(tmp_path_factory.mktemp("runs"), threads=1)


def test_examples_cover_every_category():
    for tab, n in (("t2i", 6), ("local_edit", 4), ("global_edit", 2)):
        cats = {e.example.raw_task for e in examples(tab)}
        assert len(cats) == n
    assert [e.text for e in examples("t2i")] == [e.text for e in examples("t2i")]  # fixed on every start


def test_text_to_image(demo):
    res = demo.text_to_image("a red circle and a blue star", ["world:t2i", "world:edit"], seed=3)
    assert [p.title for p in res.outputs] == ["world:t2i", "world:edit"]
    assert all(p.image.shape == (32, 32, 3) for p in res.outputs)
    assert res.inputs and res.inputs[0].image is not None  # a scene that satisfies the prompt
    for p in res.outputs:
        assert p.checks[0].text.startswith("GenEval-style:") and any("red circle" in c.text for c in p.checks)
    html = result_html(res)
    assert html.count("<img") == 3 and ("dopd-pass" in html or "dopd-fail" in html)


def test_unknown_words_flagged_not_dropped(demo):
    res = demo.text_to_image("a pink hexagon", ["world:t2i"])
    assert res.unknown == ["pink", "hexagon"] and "pink" in result_html(res)
    assert res.notes  # not in the grammar: no constraints to check


def test_edit_with_exact_target(demo):
    ex = examples("local_edit")[0]
    res = demo.edit(ex.text, ["world:local_edit", "world:t2i"], 0, example=ex)
    titles = [p.title for p in res.inputs]
    assert titles == ["input", "exact target"]
    assert np.array_equal(res.inputs[1].image, render(ex.example.target, DEFAULT_WORLD))
    out = res.outputs[0]
    assert out.checks[0].text.startswith("GEdit-style: SC") and " O " in out.checks[0].text
    assert res.outputs[1].image is None and "no image input" in res.outputs[1].note  # a T2I model cannot edit


def test_bad_requests(demo, tmp_path):
    with pytest.raises(UserError, match="at least one model"):
        demo.text_to_image("a red circle", [])
    with pytest.raises(UserError, match="at most 4"):
        demo.text_to_image("a red circle", ["world:t2i", "world:edit", "world:local_edit", "world:global_edit",
                                            "x"])
    res = demo.text_to_image("a red circle", ["world:t2i", str(tmp_path / "nope")])
    assert res.outputs[1].image is None and "unknown model" in res.outputs[1].note


def test_uploads(demo, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (3 * 2**20))
    with pytest.raises(UserError, match="upload rejected: .* MB"):
        check_upload(big)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a readable image"):
        check_upload(bad)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4000, 10)).save(huge)
    with pytest.raises(UserError, match="4000x10 px"):
        check_upload(huge)
    ok = tmp_path / "ok.png"
    ex = examples("global_edit")[0].example
    Image.fromarray(render(ex.source, DEFAULT_WORLD)).resize((96, 96), Image.NEAREST).save(ok)
    assert check_upload(ok).shape == (32, 32, 3)
    res = demo.edit("make the background teal", ["world:global_edit"], 0, upload=ok)
    assert res.inputs[0].title.startswith("input (your upload") and len(res.inputs) == 2


def test_t2i_checks_agree_with_the_suite():
    rng = np.random.default_rng(5)
    for _ in range(60):
        ex = sample_example(rng, DEFAULT_WORLD, "t2i")
        other = sample_example(rng, DEFAULT_WORLD, "t2i")
        for layout in (ex.target.layout(), other.target.layout()):
            checks = t2i_checks(ex.constraints, layout)
            assert all(c.ok for c in checks) == geneval_pass(ex.constraints, layout)


def test_find_runs(tmp_path):
    (tmp_path / "quick" / "A_danceopd").mkdir(parents=True)
    (tmp_path / "quick" / "A_danceopd" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full" / "students").mkdir(parents=True)
    (tmp_path / "full" / "students" / "A__danceopd__s0--abc.safetensors").write_bytes(b"x")
    assert find_runs(tmp_path) == [str(tmp_path / "quick" / "A_danceopd"),
                                   str(tmp_path / "full" / "students" / "A__danceopd__s0--abc.safetensors")]


def test_default_models_prefer_the_shipped_converged_student(tmp_path, monkeypatch):
    """The DanceOPD column of every tab is the shipped converged student when one is shipped, else the run
    `make demo` trained (runs/quick/A_danceopd), else nothing."""
    from danceopd.backends import world_specs

    (tmp_path / "quick" / "A_danceopd").mkdir(parents=True)
    (tmp_path / "quick" / "A_danceopd" / "model.safetensors").write_bytes(b"x")
    students = tmp_path / "students"
    students.mkdir()
    monkeypatch.setitem(world_specs.SHIPPED, "shipped:", students)
    demo = Demo(tmp_path)
    assert demo.default_models("t2i") == ["world:t2i", str(tmp_path / "quick" / "A_danceopd")]
    (students / "A_danceopd.safetensors").write_bytes(b"x")
    assert demo.default_models("t2i") == ["world:t2i", "shipped:A_danceopd"]
    assert demo.default_models("local_edit") == ["world:local_edit", "world:edit", "shipped:A_danceopd"]
    assert Demo(tmp_path / "empty").default_models("global_edit")[-1] == "shipped:A_danceopd"
    monkeypatch.setitem(world_specs.SHIPPED, "shipped:", tmp_path / "none")
    assert Demo(tmp_path / "empty").default_models("t2i") == ["world:t2i"]
