"""``run_config.json`` of a distillation keeps the YAML's layout (the methods' sections at the top level, as before
they moved into ``DistillConfig.sections``), so a run folder started by an older version still resumes."""

from __future__ import annotations

import json

from tinycfg import make_tiny_teachers, tiny_distill_yaml

from danceopd.config import load_config
from danceopd.train.distill import DistillConfig, train_distill

# the top-level keys of run_config.json before issue 20 (git 7aa3aef)
LAYOUT = {"name", "backend", "setting", "method", "seed", "routes", "student", "teacher_guidance", "rollout", "query",
          "offpolicy", "flowopd", "merge", "train", "sampling", "diffusers"}


def test_run_config_keeps_the_yaml_layout_and_resumes(tmp_path):
    teachers = make_tiny_teachers(tmp_path / "teachers")
    cfg = load_config(DistillConfig, tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "flowopd"))
    out = tmp_path / "run"
    train_distill(cfg, out, progress=False, stop_after=1)
    saved = json.loads((out / "run_config.json").read_text())
    assert set(saved) == LAYOUT
    assert saved["rollout"] == {"steps": 3, "shift": 1.0, "text_scale": 1.0}
    assert saved["flowopd"] == {"eta": 0.7, "group_size": 2, "clip": 0.2}
    train_distill(cfg, out, resume=True, progress=False)
    assert json.loads((out / "final.json").read_text())["steps"] == 2
