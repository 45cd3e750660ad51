"""16-bit weights end to end on every diffusers backend (issue 18): bf16 / fp16 frozen weights (teachers, text
encoders, VAE, the LoRA student's base) x {T2I only, T2I + edit} x {sd3, zimage, flux_kontext}: training, a
trainable-only checkpoint, resume, export with the LoRA self-check, the LoRA loaded into a fresh pipeline of that
dtype with ``load_lora_weights`` (reproduces the student, differs from the base), and sampling / editing through
the ``danceopd sample/edit`` loader. Plus: LoRA checkpoints are a small fraction of the base transformer, exact
resume with bf16 weights and an SD3 edit student, the bf16 repro of issue 18 under bf16 autocast, and the
impossible weight / autocast pair refused before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tinypipes import FAMILIES, RES, distill_yaml  # noqa: E402

from danceopd.cli import main  # noqa: E402

DTYPES = ["bfloat16", "float16"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(cfg_path, out, **kw):
    from danceopd.config import load_config
    from danceopd.train.distill import DistillConfig, train_distill

    return train_distill(load_config(DistillConfig, cfg_path), out, progress=False, **kw)


def _fresh(family, base, lora_dir, dtype):
    """A fresh pipeline of ``dtype`` from the base folder, the run's LoRA loaded by diffusers' ``load_lora_weights``
    (and an SD3 edit student's widened patch embedding), wrapped as a backend (the ``--pipeline --lora`` path)."""
    from danceopd.backends.diffusers import DTYPES as TORCH_DTYPES
    from danceopd.backends.diffusers import DiffusersOptions
    from danceopd.backends.registry import get_family

    fam = get_family(family).configure(DiffusersOptions(resolution=RES, max_sequence_length=32, dtype=dtype))
    pipe = fam.pipeline_cls.from_pretrained(str(base), dtype=TORCH_DTYPES[dtype])
    if lora_dir is not None:
        info = json.loads((lora_dir / "danceopd_model.json").read_text())
        if info.get("edit_weights"):
            pipe.transformer = fam.load_edit_weights(pipe.transformer, lora_dir / info["edit_weights"])
        pipe.load_lora_weights(str(lora_dir))
    assert pipe.transformer.dtype == TORCH_DTYPES[dtype]
    return fam.backend_from_pipeline(pipe, "cpu")


@pytest.mark.parametrize("routes", ["t2i", "t2i+edit"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_16bit_weights_end_to_end(pipes, tmp_path, family, dtype, routes):
    from safetensors.torch import load_file

    from danceopd.backends.diffusers import load_for_generation

    specs = pipes[family]
    edit = routes == "t2i+edit"
    over = {"diffusers.dtype": dtype, "train.lr": 0.05, "train.checkpoint_every": 1, "rollout.steps": 1,
            "teacher_guidance.text_scale": 3.0}
    if not edit:
        over["routes"] = [{"name": "t2i", "bucket": "t2i", "teacher": specs["t2i"]}]
    cfg = distill_yaml(tmp_path / "cfg.yaml", family, specs, "danceopd", **over)
    out = tmp_path / "run"
    _train(cfg, out, stop_after=1)                      # one step, a checkpoint, then resume to the end
    ckpt = out / "checkpoints" / "checkpoint-00000001"
    assert json.loads((ckpt / "model_state.json").read_text())["model.safetensors"]["trainable_only"]
    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert keys and all("lora_" in k or "pos_embed.proj" in k for k in keys)
    _train(cfg, out, resume=True)
    info = json.loads((out / "danceopd_model.json").read_text())
    assert json.loads((out / "final.json").read_text())["steps"] == 2
    assert info["lora_check"]["ok"], info["lora_check"]
    assert info["edit"] is (edit or family != "sd3")     # Z-Image / Kontext edit natively
    assert bool(info.get("edit_weights")) == (edit and family == "sd3")

    # the exported LoRA in a fresh pipeline of this dtype reproduces the student and changes the base's output
    check = load_file(str(out / "lora_check.safetensors"))
    x, t, v_student, src = check["x"], check["t"], check["v_student"], check.get("source")
    assert (src is not None) == (edit or family != "sd3")
    prompt = info["lora_check"]["prompt"]
    with torch.no_grad():
        fresh = _fresh(family, specs["base"], out, dtype)
        v_fresh = fresh.velocity(x, t, fresh.encode([prompt], src))
        base = _fresh(family, specs["base"], None, dtype)
        v_base = base.velocity(x, t, base.encode([prompt], src))
    err, moved = float((v_fresh - v_student).abs().max()), float((v_base - v_student).abs().max())
    assert torch.isfinite(v_fresh).all() and err <= 3e-2 * float(v_student.abs().max()), err
    assert moved > 4 * err and moved > 1e-2, (moved, err)

    # sampling / editing through the CLI's loader (danceopd sample/edit --pipeline --lora), weights in this dtype
    be = load_for_generation(pipeline=specs["base"], lora=str(out), resolution=RES, device="cpu", dtype=dtype)
    assert be.net.dtype == getattr(torch, dtype)
    img = be.sample(["a red circle"], seed=0, steps=1)
    assert img.shape == (1, RES, RES, 3) and img.dtype == np.uint8
    if edit:
        srcs = np.random.default_rng(0).integers(0, 255, (1, RES, RES, 3), dtype=np.uint8)
        assert be.sample(["make it blue"], srcs, seed=0, steps=1).shape == (1, RES, RES, 3)


def test_resume_is_exact_bf16_sd3_edit(pipes, tmp_path):
    """bf16 weights, an SD3 edit student (float32 widened patch embedding) and trainable-only checkpoints: stop
    after 2 of 3 steps and resume; the exported LoRA and edit weights equal an uninterrupted run's, byte for byte."""
    from safetensors.torch import load_file

    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", pipes["sd3"], "danceopd",
                       **{"diffusers.dtype": "bfloat16", "train.steps": 3, "train.checkpoint_every": 1,
                          "train.lr": 0.01, "rollout.steps": 1})
    _train(cfg, tmp_path / "ref")
    _train(cfg, tmp_path / "cut", stop_after=2)
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    _train(cfg, tmp_path / "cut", resume=True)
    for name in ("pytorch_lora_weights.safetensors", "danceopd_edit_weights.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()


@pytest.fixture(scope="module")
def sd3_small(tmp_path_factory):
    """The tiny-builder SD3 'small' pipeline (31M-parameter transformer) and an edit teacher for it."""
    from danceopd.testing.tiny_pipelines import build_sd3, sd3_edit_teacher_run

    root = tmp_path_factory.mktemp("sd3_small")
    base = build_sd3(root / "sd3", size="small")
    return {"base": str(base), "t2i": f"sd3:{base}", "edit": sd3_edit_teacher_run(base, root / "edit_teacher")}


def test_lora_checkpoint_is_small(sd3_small, tmp_path):
    """A LoRA run's checkpoint (LoRA, widened patch embedding, optimizer, scheduler, RNG and data state) is < 5% of
    the base transformer on disk; before issue 18 it held the whole transformer (101%)."""
    from safetensors.torch import load_file

    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", sd3_small, "danceopd",
                       **{"train.steps": 1, "train.batch_size": 1, "train.checkpoint_every": 1, "rollout.steps": 1,
                          "diffusers.lora_check": False})
    _train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-00000001"
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    base = sum(f.stat().st_size for f in (Path(sd3_small["base"]) / "transformer").rglob("*") if f.is_file())
    assert base > 100e6 and size < 0.05 * base, (size, base)
    names = {"manifest.json", "model.safetensors", "model_state.json", "optimizer.bin", "scheduler.bin",
             "random_states_0.pkl", "trainer_state_0.json"}
    assert {f.name for f in ckpt.iterdir()} == names
    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert {k for k in keys if "lora_" not in k} == {"pos_embed.proj.weight", "pos_embed.proj.bias"}


@pytest.mark.parametrize("family", ["sd3"])
def test_bf16_weights_under_bf16_autocast(pipes, tmp_path, family):
    """Issue 18's repro (bf16 weights, T2I + edit routes, bf16 autocast, gradient checkpointing) finishes; a fresh
    process, since Accelerate's mixed-precision state is process-global."""
    cfg = distill_yaml(tmp_path / "cfg.yaml", family, pipes[family], "danceopd",
                       **{"diffusers.dtype": "bfloat16", "train.mixed_precision": "bf16",
                          "diffusers.gradient_checkpointing": True, "rollout.steps": 1})
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "danceopd.cli", "distill", "--config", str(cfg), "--out", str(out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "danceopd_model.json").read_text())["lora_check"]["ok"]
    assert (out / "final.json").is_file()


def test_fp16_weights_with_bf16_autocast_refused(pipes, tmp_path, capsys, monkeypatch):
    from danceopd.backends.diffusers import family as diffusers_family

    monkeypatch.setattr(diffusers_family.DiffusersFamily, "load_transformer",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", pipes["sd3"], "danceopd",
                       **{"diffusers.dtype": "float16", "train.mixed_precision": "bf16"})
    rc = main(["distill", "--config", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "diffusers.dtype=float16 with train.mixed_precision=bf16" in err and str(cfg) in err
    assert not (tmp_path / "run").exists()


def test_bf16_refused_on_a_gpu_without_bf16(monkeypatch):
    from danceopd.backends.diffusers import DiffusersOptions
    from danceopd.backends.registry import get_family
    from danceopd.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(UserError, match="Tesla V100.*no bfloat16 support"):
        get_family("sd3").configure(DiffusersOptions(dtype="bfloat16"))
    get_family("sd3").configure(DiffusersOptions(dtype="float16"))
