"""The shipped real-model configs parse (typed config, include chains), point at their backbone, and their tiny
smoke variants run end to end offline; FSDP is refused with one line by the diffusers backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from danceopd.cli import main  # noqa: E402
from danceopd.config import load_config  # noqa: E402
from danceopd.train.distill import DistillConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("sd3", "zimage", "flux_kontext")


@pytest.mark.parametrize("family", FAMILIES)
def test_configs_parse(family):
    files = sorted((ROOT / "configs" / family).glob("*.yaml"))
    assert {f.name for f in files} >= {"setting_A_1024.yaml", "A_danceopd_1024.yaml", "smoke_tiny.yaml"}
    for f in files:
        cfg = load_config(DistillConfig, f)
        assert cfg.backend == family
        if "1024" in f.name:
            assert cfg.diffusers.resolution == 1024 and cfg.student.lora.enabled
            assert all(r.csv for r in cfg.routes)      # ShapesWorld only renders 32 / 64 px


def test_1024_preset_fails_cleanly_without_models(tmp_path, capsys):
    rc = main(["distill", "--config", ROOT / "configs/sd3/A_danceopd_1024.yaml", "--out", tmp_path / "run"])
    assert rc == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_config_runs(tmp_path, monkeypatch, family):
    from danceopd.testing.tiny_pipelines import build_demo

    monkeypatch.chdir(tmp_path)
    build_demo(family, "runs/tiny")
    assert main(["distill", "--config", ROOT / "configs" / family / "smoke_tiny.yaml", "--out", "runs/smoke"]) == 0
    info = json.loads((tmp_path / "runs/smoke/danceopd_model.json").read_text())
    assert info["lora_check"]["ok"] and info["resolution"] == 64


def test_fsdp_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    rc = main(["distill", "--config", ROOT / "configs/zimage/A_danceopd_1024.yaml", "--out", tmp_path / "r"])
    assert rc == 2 and "FSDP" in capsys.readouterr().err
