"""Training helpers shared by every trainer: EMA arithmetic, the non-finite check, the text position-embedding knob."""

import math

import pytest
import torch
import torch.nn as nn

from danceopd.backends.world import load_world_model, save_world_model
from danceopd.backends.world_model import WorldNetConfig, WorldUNet
from danceopd.train.common import EMA, check_finite
from danceopd.train.sft import ModelSection
from danceopd.world.text import WorldTokenizer

TOK = WorldTokenizer()


def test_ema_update_is_the_textbook_formula_and_load_keeps_the_device():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    named = list(net.named_parameters())
    ema = EMA(named, decay=0.9)
    ref = {n: p.detach().clone() for n, p in named}
    for step in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(named, step)
        d = min(0.9, (1 + step) / (10 + step))
        for n, p in named:
            ref[n] = ref[n].mul(d).add(p.detach(), alpha=1 - d)
    for n, _ in named:
        assert torch.equal(ema.shadow[n], ref[n]), n
    # loading checkpoint tensors (on the CPU) puts them where the shadow lives, as float32 copies
    saved = {k: v.double() for k, v in ema.tensors().items()}
    ema.load(saved)
    for n, _ in named:
        assert ema.shadow[n].dtype == torch.float32 and ema.shadow[n].device == ref[n].device
        assert ema.shadow[n].data_ptr() != saved[f"ema.{n}"].data_ptr()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_finite_names_the_offending_parameter(bad):
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    loss = net(torch.randn(2, 3)).sum()
    loss.backward()
    assert check_finite(loss, net, 7, "t2i", "sft") is None
    net[1].weight.grad[0, 1] = bad
    msg = check_finite(loss, net, 7, "t2i", "sft")
    assert msg is not None and "1.weight" in msg and "step 7" in msg
    assert "non-finite loss" in check_finite(torch.tensor(bad), net, 7, "t2i", "sft")


def test_check_finite_huge_but_finite_gradients_pass():
    net = nn.Linear(4, 1)
    loss = net(torch.randn(1, 4)).sum()
    loss.backward()
    net.weight.grad.fill_(3e38)   # the norm overflows to inf; the values are finite
    assert check_finite(loss, net, 1, "t2i", "sft") is None


def test_text_position_embedding_scale_knob_and_round_trip(tmp_path):
    base = dict(vocab_size=TOK.vocab_size, channels=(8, 16), attn_levels=(1,), text_dim=32, text_layers=1, emb_dim=32)
    torch.manual_seed(0)
    default = WorldUNet(WorldNetConfig(**base))
    big = WorldUNet(WorldNetConfig(**base, text_pos_std=1.0))
    assert default.text.pos.std().item() == pytest.approx(0.02, rel=0.2)
    assert big.text.pos.std().item() == pytest.approx(1.0, rel=0.2)
    save_world_model(big, TOK, tmp_path / "m.safetensors")
    back, _, _, _ = load_world_model(tmp_path / "m.safetensors")
    assert back.cfg.text_pos_std == 1.0
    # models saved before the knob existed load with the old default
    d = big.cfg.to_dict()
    del d["text_pos_std"]
    assert WorldNetConfig.from_dict(d).text_pos_std == 0.02
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="text_pos_std"):
            ModelSection(text_pos_std=bad).validate()
