"""Checkpoints of LoRA models hold only what trains (Accelerate save/load hooks): the weights file has exactly the
trainable parameters, a load restores them, and a resume on top of different frozen weights is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from danceopd.train.checkpoint import load_checkpoint, save_checkpoint
from danceopd.util.lora import LoraConfig, add_lora


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(8, 8)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.proj(torch.relu(self.q(x)))


def _prepared():
    from accelerate import Accelerator

    torch.manual_seed(0)
    net = add_lora(Net(), LoraConfig(enabled=True, rank=2, alpha=2.0, targets=["q", "proj"]))
    params = [p for p in net.parameters() if p.requires_grad]
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(net, torch.optim.AdamW(params, lr=0.1))
    model(torch.randn(3, 8)).pow(2).mean().backward()
    opt.step()
    return acc, model, opt


def test_lora_checkpoint_holds_only_trainable_and_round_trips(tmp_path):
    acc, model, _ = _prepared()
    ckpt = save_checkpoint(acc, tmp_path, 1, {"step": 1}, {})
    sd = load_file(str(ckpt / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(sd) == trainable and all("lora_" in k for k in sd)
    info = json.loads((ckpt / "model_state.json").read_text())["model.safetensors"]
    assert info["trainable_only"] and info["keys"] == len(trainable)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    load_checkpoint(acc, ckpt)
    assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())


def test_resume_on_other_frozen_weights_refused(tmp_path):
    acc, model, _ = _prepared()
    ckpt = save_checkpoint(acc, tmp_path, 1, {"step": 1}, {})
    with torch.no_grad():
        model.q.base_layer.weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="frozen weights differ"):
        load_checkpoint(acc, ckpt)
