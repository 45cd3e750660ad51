"""Shipped converged students (report/ship.py) and the main command that evaluates them: the comparison table and
both Table-2 blocks printed, then a short live distillation. Tiny cells and the stand-in scorer of
test_report_runner.py; the "students" are tiny world models published like the full preset's curve cells."""

import contextlib
import io
import json
import shutil

import pytest
from test_report_runner import _tiny, fake_scores
from tinycfg import make_tiny_teachers

from danceopd.cli import main
from danceopd.errors import UserError
from danceopd.report import cell, plan, runner, ship
from danceopd.report.plan import MAIN_METHODS


def _published(tmp_path, skip=None):
    """A results/full-like folder with the seed-0 curve cell of every main method in both settings."""
    t = make_tiny_teachers(tmp_path / "teachers")
    res = tmp_path / "results"
    (res / "cells").mkdir(parents=True)
    (res / "students").mkdir()
    for s in ("A", "B"):
        for m in MAIN_METHODS:
            if (s, m) == skip:
                continue
            name = f"{s}__{m}__s0--abc{len(m)}{s}"
            rec = {"id": f"{s}/{m}/s0", "key": f"k{s}{m}", "status": "done", "steps": 3000,
                   "tags": {"setting": s, "method": m, "seed": 0, "lr": 2e-4, "sample_scale": 1.0},
                   "command": f"danceopd distill --config configs/world/{s}_{m}.yaml", "git_sha": "x",
                   "scores": {"gedit": {"avg": {"o": 7.0}}, "items": {"gedit_o": {}}},
                   "curve": [{"step": 3000, "scores": {"gedit": {"avg": {"o": 7.0}}}, "test": {}}]}
            (res / "cells" / f"{name}.json").write_text(json.dumps(rec))
            shutil.copyfile(t["edit"], res / "students" / f"{name}.safetensors")
    # a grid cell and a seed-1 cell are not shipped
    (res / "cells" / "A__danceopd__s0__grid-lr--x.json").write_text(json.dumps(
        {"id": "g", "status": "done", "tags": {"setting": "A", "method": "danceopd", "grid": "lr"}, "curve": [1]}))
    return res


def test_ship_students_copies_the_seed0_curve_students_with_a_manifest(tmp_path):
    res = _published(tmp_path)
    man = ship.ship_students(res, tmp_path / "students")
    assert sorted(man) == sorted(f"{s}_{m}" for s in ("A", "B") for m in MAIN_METHODS)
    e = man["B_danceopd"]
    f = tmp_path / "students" / "B_danceopd.safetensors"
    assert e["sha256"] == ship.sha256(f) and e["bytes"] == f.stat().st_size and e["steps"] == 3000
    assert e["command"].startswith("danceopd distill") and "items" not in e["scores"] and e["curve"]
    assert ship.manifest(tmp_path / "students") == man


def test_ship_students_refuses_an_incomplete_set_before_writing(tmp_path):
    res = _published(tmp_path, skip=("B", "soft_mix"))
    with pytest.raises(UserError, match="B/soft_mix"):
        ship.ship_students(res, tmp_path / "students", settings=("A", "B"))
    assert not (tmp_path / "students").exists()
    with pytest.raises(UserError, match="setting 'C'"):
        ship.ship_students(res, tmp_path / "students", settings=("C",))
    shutil.rmtree(res / "cells")
    (res / "cells").mkdir()
    with pytest.raises(UserError, match="no setting has all four.*A/danceopd"):
        ship.ship_students(res, tmp_path / "students")
    assert not (tmp_path / "students").exists()
    with pytest.raises(UserError, match="no such shipped student"):
        ship.student_path("shipped:A_nope", tmp_path)


def test_ship_students_ships_the_complete_settings_and_drops_stale_ones(tmp_path):
    ship.ship_students(_published(tmp_path), tmp_path / "students")            # both settings
    res = _published(tmp_path / "later", skip=("B", "soft_mix"))
    man = ship.ship_students(res, tmp_path / "students")                        # B incomplete: A only
    assert sorted(man) == sorted(f"A_{m}" for m in MAIN_METHODS)
    assert sorted(f.stem for f in (tmp_path / "students").glob("*.safetensors")) == sorted(man)


def test_main_command_with_one_shipped_setting_says_the_other_is_missing(tmp_path, monkeypatch):
    ship.ship_students(_published(tmp_path, skip=("B", "soft_mix")), tmp_path / "students")
    monkeypatch.setattr(cell, "STUDENT_DIR", tmp_path / "students")
    monkeypatch.setattr(runner, "evaluate_model", fake_scores)
    real = plan.quick_plan
    monkeypatch.setattr(plan, "quick_plan", lambda seed=0, shipped=None: _tiny(real(seed, shipped)))
    cells = real(0, ship.manifest())
    assert [c.id for c in cells if c.kind == "teacher" and not str(c.model).startswith("shipped:")] == \
        ["teacher/t2i", "teacher/edit"]   # only the shipped setting's teachers
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["reproduce", "--preset", "quick", "--out", str(tmp_path / "quick")]) == 0
    text = printed.getvalue()
    assert "Table 2, setting A:" in text and "Table 2, setting B:" not in text
    assert "Setting B: no shipped students yet" in text and "| DanceOPD (On-Policy) |" in text


def test_main_command_evaluates_shipped_students_then_trains_live(tmp_path, monkeypatch):
    ship.ship_students(_published(tmp_path), tmp_path / "students")
    monkeypatch.setattr(cell, "STUDENT_DIR", tmp_path / "students")
    monkeypatch.setattr(runner, "evaluate_model", fake_scores)
    real = plan.quick_plan
    monkeypatch.setattr(plan, "quick_plan", lambda seed=0, shipped=None: _tiny(real(seed, shipped)))
    cells = real(0, ship.manifest())
    assert sum(str(c.model).startswith("shipped:") for c in cells) == 8
    assert [c.id for c in cells if c.kind == "distill"] == [f"A/danceopd/s0/live={plan.LIVE_STEPS}"]
    key = next(c for c in cells if c.model == "shipped:A_danceopd").key()
    out = tmp_path / "quick"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["reproduce", "--preset", "quick", "--out", str(out)]) == 0
    text = printed.getvalue()
    for row in ("| Single-Task Teacher |", "| DanceOPD (On-Policy) |", "Table 2, setting A:", "Table 2, setting B:",
                "| source: local_edit |", "Students: the shipped converged students", "Live run on this machine"):
        assert row in text, row
    rec = json.loads(next((out / "cells").glob("A__danceopd__shipped--*/cell.json")).read_text())
    assert rec["steps"] == 3000 and rec["model"].endswith("A_danceopd.safetensors")
    md = (out / "report.md").read_text()
    assert "Live run on this machine" in md and "3000" in md
    # a re-shipped student is a new cell (its sha256 is part of the key)
    (tmp_path / "students" / "manifest.json").write_text(json.dumps(
        {**ship.manifest(), "A_danceopd": {**ship.manifest()["A_danceopd"], "sha256": "other"}}))
    assert next(c for c in real(0, ship.manifest()) if c.model == "shipped:A_danceopd").key() != key


def test_shipped_students_load_by_name_and_match_their_manifest():
    """Every shipped converged student: its file's sha256 is the manifest's, it loads as shipped:<name> (every
    --model flag), samples with the guidance scale it was chosen with, and is listed with the shipped models."""
    from danceopd.backends.world_specs import load_backend, resolve_model_path, shipped_models

    man = ship.manifest()
    if not man:
        pytest.skip("no converged students shipped")
    for name, e in man.items():
        path = resolve_model_path(f"shipped:{name}")
        assert path == cell.STUDENT_DIR / f"{name}.safetensors" and ship.sha256(path) == e["sha256"], name
        assert load_backend(f"shipped:{name}").sampling.text_scale == e["sample_scale"], name
        assert f"shipped:{name}" in shipped_models()
    with pytest.raises(UserError, match="unknown model 'shipped:A_nope'; shipped models: world:"):
        resolve_model_path("shipped:A_nope")
