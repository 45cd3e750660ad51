"""Rough edges a new user met (issue 19), each pinned: unknown words are an error (or a warning), ``--set`` errors
name the override, eval prints the comparison table's per-bucket columns, installs print no warnings of ours."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from danceopd.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_words_one_line_error_with_the_vocabulary(tmp_path, capsys):
    assert main(["sample", "--model", "world:t2i", "--prompt", "a pink hexagon", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --prompt")
    assert "'pink', 'hexagon'" in err and "shapes: circle, square, triangle, star" in err
    assert "--allow-unknown-words" in err and not (tmp_path / "a.png").exists()


def test_allow_unknown_words_warns_and_generates(tmp_path, capsys):
    out = tmp_path / "a.png"
    assert main(["sample", "--model", "world:t2i", "--prompt", "a pink circle", "--out", str(out),
                 "--allow-unknown-words", "--steps", "2"]) == 0
    assert out.exists() and "warning:" in capsys.readouterr().err
    assert main(["edit", "--model", "world:edit", "--image", str(out), "--instruction", "make it sparkle",
                 "--out", str(tmp_path / "b.png")]) == 2
    assert "'sparkle'" in capsys.readouterr().err


@pytest.mark.parametrize("override, needle", [
    ("train.stepz=10", "--set train.stepz=10: unknown key 'stepz' in train; expected one of steps,"),
    ("stepz=1", "--set stepz=1: unknown key 'stepz' in the config"),
    ("routes.0.teacherx=a", "--set routes.0.teacherx=a: unknown key 'teacherx' in routes.0"),
    ("train.steps=abc", "--set train.steps=abc: expected an integer, got 'abc'"),
])
def test_set_errors_name_the_override(override, needle, tmp_path, capsys):
    rc = main(["distill", "--config", str(ROOT / "configs/world/A_danceopd.yaml"), "--set", override,
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {err[7:]}" and needle in err and len(err.splitlines()) == 1
    assert "A_danceopd.yaml" not in err


def test_eval_prints_and_writes_the_per_bucket_columns(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--model", "degrade:0.3", "--suite", "edit", "--n", "4", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "scores.json").read_text())
    local, glob = s["clip_score_by_bucket"]["local_edit"], s["lpips_by_bucket"]["global_edit"]
    assert f"local_edit: clip_score {local:.2f}" in printed and f"lpips {glob:.4f}" in printed
    md = (out / "scores.md").read_text()
    assert f"| local_edit | {local:.2f} |" in md and f"| global_edit | {s['clip_score_by_bucket']['global_edit']:.2f} " \
        f"| {glob:.4f} |" in md


def test_packaging_declares_spdx_license():
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python >= 3.11)
    assert '\nlicense = "Apache-2.0"\n' in text and 'requires = ["setuptools>=77"' in text
    assert '\ndemo = ["gradio' in text


def test_editable_build_prints_no_warnings(tmp_path):
    """The build backend pip runs for `pip install -e .`, run directly (offline): no warning of any kind."""
    code = ("import warnings, sys; warnings.simplefilter('always');"
            "from setuptools import build_meta as b;"
            f"b.build_editable({str(tmp_path)!r})")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warning" not in (r.stderr + r.stdout).lower(), (r.stderr + r.stdout)[-3000:]


def test_scientific_notation_is_a_number_in_set_and_yaml(tmp_path):
    """YAML 1.1 reads ``5e-05`` (no dot) as a string: a learning rate written that way, on the command line or in
    a config file, is still a number (the full preset's grid edge point is ``train.lr=5e-05``)."""
    from danceopd.config import load_config
    from danceopd.train.distill import DistillConfig

    cfg = load_config(DistillConfig, ROOT / "configs/world/A_danceopd.yaml", ["train.lr=5e-05"])
    assert cfg.train.lr == 5e-05
    y = tmp_path / "c.yaml"
    y.write_text(f"include: {ROOT / 'configs/world/A_danceopd.yaml'}\ntrain: {{lr: 1E-3}}\n")
    assert load_config(DistillConfig, y, []).train.lr == 1e-3
    with pytest.raises(Exception, match="expected a number, got '5e-x'"):
        load_config(DistillConfig, ROOT / "configs/world/A_danceopd.yaml", ["train.lr=5e-x"])
