"""The SFT trainer and generation commands end to end on a tiny model (seconds)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tinycfg import tiny_sft_yaml

from danceopd.backends.world import load_world_model
from danceopd.cli import main


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = tiny_sft_yaml(d / "t2i.yaml", **{"train.steps": 4, "train.checkpoint_every": 2})
    assert main(["train", "--config", str(cfg), "--out", str(d / "t2i")]) == 0
    ecfg = tiny_sft_yaml(d / "edit.yaml", init=str(d / "t2i"), widen_for_editing=True,
                         **{"data.bucket": "edit", "train.steps": 3, "train.freeze_text": True})
    assert main(["train", "--config", str(ecfg), "--out", str(d / "edit")]) == 0
    return d


def test_train_outputs(tiny_runs):
    d = tiny_runs / "t2i"
    assert (d / "model.safetensors").exists() and (d / "run_config.json").exists()
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all("loss" in r for r in lines)
    assert any(k.startswith("loss_t") for k in lines[0])  # loss binned by t
    assert list((d / "sft").rglob("events.out.tfevents*"))  # tensorboard log


def test_edit_teacher_widened_and_text_frozen(tiny_runs):
    base, _, _, _ = load_world_model(tiny_runs / "t2i" / "model.safetensors")
    edit, _, _, _ = load_world_model(tiny_runs / "edit" / "model.safetensors")
    assert edit.cfg.edit and not base.cfg.edit
    for k, v in base.text.state_dict().items():
        assert torch.equal(v, edit.text.state_dict()[k]), k  # text encoder frozen for descendants


def test_sample_and_edit_commands(tiny_runs, tmp_path):
    out = tmp_path / "a.png"
    assert main(["sample", "--model", str(tiny_runs / "t2i"), "--prompt", "a red circle", "--seed", "3",
                 "--out", str(out), "--steps", "2"]) == 0
    a = np.asarray(Image.open(out))
    assert a.shape == (32, 32, 3)
    assert main(["sample", "--model", str(tiny_runs / "t2i"), "--prompt", "a red circle", "--seed", "3",
                 "--out", str(tmp_path / "b.png"), "--steps", "2"]) == 0
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b.png")))  # same seed, same image
    e = tmp_path / "e.png"
    assert main(["edit", "--model", str(tiny_runs / "edit"), "--image", str(out), "--instruction",
                 "invert the colors", "--out", str(e), "--steps", "2"]) == 0
    assert np.asarray(Image.open(e)).shape == (32, 32, 3)
    # a T2I model cannot edit: one-line error
    assert main(["edit", "--model", str(tiny_runs / "t2i"), "--image", str(out),
                 "--instruction", "invert the colors", "--out", str(tmp_path / "f.png")]) == 2


def test_batch_mode_from_csv(tiny_runs, tmp_path):
    assert main(["world", "export", "--bucket", "edit", "--n", "5", "--out", str(tmp_path / "ds")]) == 0
    assert main(["edit", "--model", str(tiny_runs / "edit"), "--csv", str(tmp_path / "ds" / "data.csv"),
                 "--out", str(tmp_path / "o"), "--steps", "2"]) == 0
    assert len(list((tmp_path / "o").glob("edit-*.png"))) == 5 and (tmp_path / "o" / "contact_sheet.png").exists()
    assert main(["world", "export", "--bucket", "t2i", "--n", "3", "--out", str(tmp_path / "t")]) == 0
    assert main(["sample", "--model", str(tiny_runs / "t2i"), "--csv", str(tmp_path / "t" / "data.csv"),
                 "--out", str(tmp_path / "so"), "--steps", "2"]) == 0
    assert (tmp_path / "so" / "contact_sheet.png").exists()


def test_lora_save_load_roundtrip(tiny_runs, tmp_path):
    """SFT with PEFT LoRA on a base: lora.safetensors loaded into a fresh copy of the base reproduces the exported
    merged model."""
    from peft import set_peft_model_state_dict

    from danceopd.util.lora import LoraConfig, add_lora

    base_path = tiny_runs / "t2i" / "model.safetensors"
    cfg = tiny_sft_yaml(tmp_path / "c.yaml", init=str(base_path),
                        **{"train.steps": 3, "train.ema_decay": 0.0, "optim.lr": 0.01,
                           "lora": {"enabled": True, "rank": 2, "alpha": 4.0}})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "lora_run")]) == 0
    merged, tok, _, _ = load_world_model(tmp_path / "lora_run" / "model.safetensors")
    lora = load_file(str(tmp_path / "lora_run" / "lora.safetensors"))
    assert lora and all("lora_" in k for k in lora)
    fresh, _, _, _ = load_world_model(base_path)
    fresh = add_lora(fresh, LoraConfig(enabled=True, rank=2, alpha=4.0))
    set_peft_model_state_dict(fresh, lora)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    tokens = tok.encode(["a red circle", "two stars"])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, t, tokens), merged(x, t, tokens), rtol=1e-4, atol=1e-5)
        base, _, _, _ = load_world_model(base_path)
        assert not torch.allclose(base(x, t, tokens), merged(x, t, tokens), atol=1e-6)  # the adapters did train
