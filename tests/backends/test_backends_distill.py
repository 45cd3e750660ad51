"""The one engine through the diffusers adapters: every method trains two steps on tiny SD3 / Z-Image / Kontext
teachers (T2I + edit routes; LoRA students, a weight-merged full export), the exported LoRA reloads into a fresh
pipeline with ``load_lora_weights`` and reproduces the student, the CLI samples from it, bad configs fail with
exit 2 before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tinypipes import FAMILIES, distill_yaml  # noqa: E402

from danceopd.cli import main  # noqa: E402

METHODS = ["danceopd", "joint_sft", "offpolicy", "soft_mix", "weight_merge", "diffusionopd", "flowopd"]


def _distill(cfg, out, *extra) -> int:
    return main(["distill", "--config", str(cfg), "--out", str(out), *map(str, extra)])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_two_steps(pipes, tmp_path, family, method):
    cfg = distill_yaml(tmp_path / "cfg.yaml", family, pipes[family], method)
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    info = json.loads((out / "danceopd_model.json").read_text())
    assert info["family"] == family
    if method == "weight_merge":
        assert info["kind"] == "full" and (out / "transformer" / "config.json").is_file()
        return
    assert json.loads((out / "final.json").read_text())["steps"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss"] is not None for r in rows)
    assert info["kind"] == "lora" and (out / "pytorch_lora_weights.safetensors").is_file()
    assert info["lora_check"]["ok"], info["lora_check"]
    assert info["edit"] is True
    if family == "sd3":     # the widened patch embedding travels next to the LoRA
        assert (out / info["edit_weights"]).is_file()


def _fresh_backend(family, base, lora_dir):
    """A fresh pipeline from the base folder, the LoRA loaded by diffusers itself, wrapped as a backend."""
    from danceopd.backends.diffusers import DiffusersOptions
    from danceopd.backends.registry import get_family

    fam = get_family(family).configure(DiffusersOptions(resolution=64, max_sequence_length=32))
    pipe = fam.pipeline_cls.from_pretrained(base)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir))
    return fam.backend_from_pipeline(pipe)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_reloads_into_fresh_pipeline(pipes, tmp_path, family):
    from safetensors import safe_open
    from safetensors.torch import load_file

    specs = dict(pipes[family])
    cfg = distill_yaml(tmp_path / "cfg.yaml", family, specs, "danceopd", **{
        "routes": [{"name": "t2i", "bucket": "t2i", "teacher": specs["edit"] if family != "sd3" else specs["t2i"]}],
        "train.lr": 0.05, "teacher_guidance.text_scale": 3.0,
        "student": {"init": specs["t2i"], "lora": {"enabled": True, "rank": 4, "alpha": 2.0}}})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert keys and all(k.startswith("transformer.") for k in keys)
    check = load_file(str(out / "lora_check.safetensors"))
    with safe_open(str(out / "lora_check.safetensors"), "pt") as f:
        prompt = f.metadata()["prompt"]
    x, t, v_student, src = check["x"], check["t"], check["v_student"], check.get("source")
    assert (src is not None) == (family != "sd3")       # Kontext / Z-Image check the edit path too
    with torch.no_grad():
        fresh = _fresh_backend(family, specs["base"], out)
        v_fresh = fresh.velocity(x, t, fresh.encode([prompt], src))
        base = _fresh_backend(family, specs["base"], None)
        v_base = base.velocity(x, t, base.encode([prompt], src))
    assert torch.allclose(v_fresh, v_student, atol=1e-5), (v_fresh - v_student).abs().max()
    assert (v_base - v_student).abs().max() > 1e-3        # the LoRA is not a no-op (rank/alpha metadata matter)
    # the CLI: --pipeline + --lora equals the run folder itself
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", "--pipeline", specs["base"], "--lora", str(out), "--prompt", "a cat", "--out", a,
                 "--steps", "2"]) == 0
    assert main(["sample", "--model", str(out), "--prompt", "a cat", "--out", b, "--steps", "2"]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_edit_cli_and_teacher_from_run_folder(pipes, tmp_path):
    """An SD3 edit student (widened patch embedding + LoRA) edits through the CLI and serves as a teacher spec."""
    import numpy as np
    from PIL import Image

    specs = pipes["sd3"]
    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", specs, "danceopd", **{"train.lr": 0.05})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(src)
    assert main(["edit", "--pipeline", specs["base"], "--lora", str(out), "--image", src, "--instruction",
                 "make it red", "--out", tmp_path / "e.png", "--steps", "2"]) == 0
    assert np.asarray(Image.open(tmp_path / "e.png")).shape == (64, 64, 3)
    cfg2 = distill_yaml(tmp_path / "cfg2.yaml", "sd3", {**specs, "edit": f"sd3:{out}"}, "danceopd")
    assert _distill(cfg2, tmp_path / "run2") == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_full_finetune_student_with_gradient_checkpointing(pipes, tmp_path, family):
    cfg = distill_yaml(tmp_path / "cfg.yaml", family, pipes[family], "danceopd", lora=False,
                       **{"diffusers.gradient_checkpointing": True})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    info = json.loads((out / "danceopd_model.json").read_text())
    assert info["kind"] == "full" and (out / "transformer" / "config.json").is_file()
    assert main(["sample", "--model", str(out), "--prompt", "x", "--out", tmp_path / "s.png", "--steps", "1"]) == 0


def _bf16_run(pipes, tmp_path, family, **over):
    """bf16 autocast through the engine's mixed_precision (a fresh process: Accelerate's state is global)."""
    import os
    import subprocess
    import sys

    cfg = distill_yaml(tmp_path / "cfg.yaml", family, pipes[family], "danceopd",
                       **{"train.mixed_precision": "bf16", "diffusers.gradient_checkpointing": True, **over})
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "danceopd.cli", "distill", "--config", str(cfg), "--out", str(out)],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] is not None for r in rows)
    return json.loads((out / "danceopd_model.json").read_text())


def test_bf16_autocast_sd3(pipes, tmp_path):
    info = _bf16_run(pipes, tmp_path, "sd3")
    assert info["lora_check"]["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["zimage", "flux_kontext"])
def test_bf16_autocast_bf16_weights(pipes, tmp_path, family):
    info = _bf16_run(pipes, tmp_path, family, **{"diffusers.dtype": "bfloat16",
                                                  "diffusers.teacher_device": "cpu_offload"})
    assert info["lora_check"]["ok"]


@pytest.mark.parametrize("case, message", [
    ({"routes": [{"name": "t2i", "bucket": "t2i", "teacher": "sd3:/nonexistent/pipe"}]}, "not found"),
    ({"routes": [{"name": "t2i", "bucket": "t2i", "teacher": "flux_kontext:PIPE"}]}, "'flux_kontext' model"),
    ({"diffusers.resolution": 60}, "multiple of 16"),
    ({"diffusers.dtype": "float8"}, "diffusers.dtype"),
    ({"student": {"init": "PIPE+lora:/nowhere/lora"}}, "LoRA"),
])
def test_bad_config_exit_2_before_loading(pipes, tmp_path, capsys, monkeypatch, case, message):
    from danceopd.backends.diffusers import family as diffusers_family

    specs = pipes["sd3"]
    case = json.loads(json.dumps(case).replace("PIPE", specs["base"]))
    loaded = []
    monkeypatch.setattr(diffusers_family.DiffusersFamily, "load_transformer",
                        lambda *a, **k: loaded.append(1) or (_ for _ in ()).throw(AssertionError("loaded")))
    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", specs, "danceopd", **case)
    out = tmp_path / "run"
    rc = _distill(cfg, out)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() and not loaded


@pytest.mark.parametrize("student, message", [
    ({"lora": {"enabled": True, "targets": ["nope"]}}, "student.lora.targets"),
    ({"freeze_text": False}, "freeze_text"),
])
def test_bad_student_one_line(pipes, tmp_path, capsys, student, message):
    cfg = distill_yaml(tmp_path / "cfg.yaml", "zimage", pipes["zimage"], "danceopd",
                       student={"init": pipes["zimage"]["t2i"], **student})
    assert _distill(cfg, tmp_path / "run") == 2
    assert message in capsys.readouterr().err


def test_family_reports_missing_diffusers_support(monkeypatch):
    from danceopd.backends.registry import get_family
    from danceopd.errors import UserError

    fam = get_family("zimage")
    monkeypatch.setattr(type(fam), "pipeline_attr", "ZImagePipelineOfTheFuture")
    with pytest.raises(UserError, match="ships ZImagePipelineOfTheFuture"):
        fam.check(str(Path("/nonexistent")))


def test_resume_is_exact(pipes, tmp_path):
    """Stop after 2 of 3 steps, resume: the exported LoRA equals an uninterrupted run's, byte for byte."""
    from safetensors.torch import load_file

    from danceopd.config import load_config
    from danceopd.train.distill import DistillConfig, train_distill

    cfg = load_config(DistillConfig, distill_yaml(tmp_path / "cfg.yaml", "flux_kontext", pipes["flux_kontext"],
                                                  "danceopd", **{"train.steps": 3, "train.checkpoint_every": 1,
                                                                 "train.lr": 0.01}))
    train_distill(cfg, tmp_path / "ref", progress=False)
    train_distill(cfg, tmp_path / "cut", progress=False, stop_after=2)
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    train_distill(cfg, tmp_path / "cut", resume=True, progress=False)
    a = load_file(str(tmp_path / "ref" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "cut" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()
