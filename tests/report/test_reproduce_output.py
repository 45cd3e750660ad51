"""What ``danceopd reproduce`` gives a user (issue 19): the comparison table on the terminal, readable student
paths next to the hashed cell folders, and sample grids with column headers and clear row labels. Tiny cells and a
stand-in scorer, as in test_report_runner.py."""

import contextlib
import io
import os

import pytest
from PIL import Image
from test_report_runner import _tiny, fake_scores

from danceopd.cli import main
from danceopd.report import cell, plan, runner
from danceopd.report.links import link_name, link_runs


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    """The quick preset's form without shipped students (test_report_ship.py covers the form with them)."""
    out = tmp_path_factory.mktemp("reproduce") / "quick"
    real = plan.quick_plan
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
        mp.setattr(cell, "STUDENT_DIR", out.parent / "no_students")
        mp.setattr(runner, "evaluate_model", fake_scores)
        mp.setattr(plan, "quick_plan", lambda seed=0, shipped=None: _tiny(real(seed, shipped)))
        assert main(["reproduce", "--preset", "quick", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_prints_the_comparison_table_and_student_paths(quick_out):
    out, printed = quick_out
    for row in ("| Setting A (T2I + Edit) | T2I FID", "| Single-Task Teacher |", "| Naive Student (Average Gradients) |",
                "| Off-Policy Distillation |", "| DanceOPD (On-Policy) |"):
        assert row in printed, row
    assert f"students: {out / 'A_joint_sft'}" in printed and str(out / "A_danceopd") in printed
    assert "report: " in printed


def test_readable_run_paths(quick_out):
    out, _ = quick_out
    for m in ("joint_sft", "offpolicy", "danceopd"):
        link = out / f"A_{m}"
        assert (link / "model.safetensors").is_file()
        assert os.path.realpath(link).startswith(os.path.realpath(out / "cells"))
    # a rerun replaces the links in place
    recs = runner.load_done(_tiny(plan.quick_plan()), out)
    assert sorted(p.name for p in link_runs(recs, out)) == ["A_danceopd", "A_joint_sft", "A_offpolicy"]
    assert (out / "A_danceopd").is_symlink() and not list(out.glob(".*.tmp"))
    # the README's commands work on the readable path
    assert main(["sample", "--model", str(out / "A_danceopd"), "--prompt", "a red circle",
                 "--out", str(out / "a.png")]) == 0


def test_sample_grid_is_readable(quick_out):
    out, _ = quick_out
    md = (out / "report.md").read_text()
    assert "![samples A](figures/samples_A.png)" in md
    with Image.open(out / "figures" / "samples_A.png") as im:
        # 6 columns of 96 px cells; header + input + target + 2 teachers + 3 students
        assert im.width >= 6 * 96 and im.height >= 7 * 96


def test_link_names():
    assert link_name({"setting": "A", "method": "danceopd", "seed": 0}) == "A_danceopd"
    assert link_name({"setting": "B", "method": "joint_sft", "seed": 2}) == "B_joint_sft_s2"
    assert link_name({"setting": "A", "method": "danceopd", "seed": 0, "ablation": "k"}) is None
    assert link_name({"teacher": "t2i"}) is None
    assert link_name({"setting": "A", "method": "danceopd", "seed": 0, "grid": "lr", "value": "0.0005"}) is None
    assert link_name({"setting": "A", "method": "flowopd", "seed": 0, "matched": "samples"}) == "A_flowopd_samples"


def test_a_curve_and_its_continuation_get_one_link_the_longer_run(tmp_path):
    recs = {}
    for cid, steps in (("c", 3000), ("e", 6000)):
        run = tmp_path / "cells" / f"B__danceopd__s0--{cid}" / "run"
        run.mkdir(parents=True)
        (run / "model.safetensors").write_bytes(b"x")
        recs[cid] = {"kind": "distill", "status": "done", "steps": steps, "model": str(run / "model.safetensors"),
                     "tags": {"setting": "B", "method": "danceopd", "seed": 0, **({"extend": 6000} if cid == "e" else {})}}
    made = link_runs(dict(reversed(list(recs.items()))), tmp_path)
    assert [p.name for p in made] == ["B_danceopd"]
    assert os.readlink(tmp_path / "B_danceopd").endswith("B__danceopd__s0--e/run")
