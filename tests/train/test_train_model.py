import numpy as np
import pytest
import torch

from danceopd.backends.world import WorldBackend, load_world_model, save_world_model
from danceopd.backends.world_model import WorldNetConfig, WorldUNet, grow, widen_for_editing
from danceopd.world import WorldTokenizer

TOK = WorldTokenizer()


def tiny(edit=False, seed=0):
    torch.manual_seed(seed)
    return WorldUNet(WorldNetConfig(vocab_size=TOK.vocab_size, channels=(8, 16), attn_levels=(1,), text_dim=16,
                                    text_layers=1, emb_dim=32, edit=edit))


def _randomize(net):
    # zero-initialized output layers would make every comparison trivially equal: perturb all weights
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_grown_model_equals_parent_at_step0_and_then_trains_the_new_blocks(tmp_path):
    parent = _randomize(tiny()).eval()
    child = grow(parent, attn_levels=[0, 1], self_attn_levels=[0, 1], text_layers=3).eval()
    assert child.cfg.attn_levels == (0, 1) and child.cfg.self_attn_levels == (0, 1) and child.cfg.text_layers == 3
    assert sum(p.numel() for p in child.parameters()) > sum(p.numel() for p in parent.parameters())
    x, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    tokens = TOK.encode(["a red circle", "a star left of a square", "", "two squares"])
    with torch.no_grad():
        assert torch.equal(child(x, t, tokens), parent(x, t, tokens))
    # the new blocks are live: one gradient step on them changes the output
    child.train()
    loss = child(x, t, tokens).pow(2).mean()
    loss.backward()
    assert child.down[0].ca.proj.weight.grad.abs().sum() > 0 and child.text.layers[2].proj.weight.grad.abs().sum() > 0
    # the grown config round-trips through a saved model
    save_world_model(child, TOK, tmp_path / "g.safetensors")
    back, _, _, _ = load_world_model(tmp_path / "g.safetensors")
    assert back.cfg == child.cfg
    with pytest.raises(ValueError, match="must contain the parent"):
        grow(parent, attn_levels=[0])
    with pytest.raises(ValueError, match="text_layers"):
        grow(parent, text_layers=0)


def test_text_conv_blocks_contextualize_tokens_and_ignore_padding(tmp_path):
    torch.manual_seed(0)
    cfg = WorldNetConfig(vocab_size=TOK.vocab_size, channels=(8, 16), attn_levels=(1,), text_dim=16, text_layers=1,
                         text_conv_layers=2, emb_dim=32)
    net = WorldUNet(cfg).eval()
    a, b = TOK.encode(["a red circle and a blue square", "a blue circle and a red square"])
    with torch.no_grad():
        h, pad, _ = net.text(torch.stack([a, b]))
        # "circle" (index 3) sees its adjective: its state differs between the two prompts
        assert not torch.allclose(h[0, 3], h[1, 3], atol=1e-4)
        # padding never leaks into real tokens: changing the pad embedding leaves the real tokens' states alone
        x = TOK.encode(["a red circle"])
        h1, _, _ = net.text(x)
        net.text.tok.weight[0].normal_(0, 10.0)
        h2, _, _ = net.text(x)
    assert torch.allclose(h1[0, :4], h2[0, :4], atol=1e-5)
    save_world_model(net, TOK, tmp_path / "c.safetensors")
    back, _, _, _ = load_world_model(tmp_path / "c.safetensors")
    assert back.cfg.text_conv_layers == 2 and len(back.text.convs) == 2


def test_zero_init_widening_equals_parent_at_step0():
    parent = _randomize(tiny()).eval()
    child = widen_for_editing(parent).eval()
    x, t = torch.randn(3, 3, 32, 32), torch.rand(3)
    tokens = TOK.encode(["add a red star in the center", "", "make it a line sketch"])
    src = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        v_parent = parent(x, t, tokens)
        v_child = child(x, t, tokens, source=src)
    assert torch.equal(v_parent, v_child)
    assert child.conv_in.weight.shape[1] == parent.conv_in.weight.shape[1] + 4
    # and the new path is live: after a gradient step on the source weights the outputs differ
    child.conv_in.weight.data[:, -4:] += 0.1
    with torch.no_grad():
        assert not torch.equal(child(x, t, tokens, source=src), v_parent)
    with pytest.raises(ValueError):
        widen_for_editing(child)


def test_text_changes_output_and_empty_prompt_is_finite():
    net = _randomize(tiny()).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    with torch.no_grad():
        a = net(x, t, TOK.encode(["a red circle", "a red circle"]))
        b = net(x, t, TOK.encode(["a blue square", ""]))
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_cfg_guided_field_arithmetic():
    net = _randomize(tiny()).eval()
    be = WorldBackend(net, TOK)
    x, t = torch.randn(2, 3, 32, 32), torch.rand(2)
    prompts = ["a red circle", "two stars"]
    with torch.no_grad():
        v_c = be.velocity(x, t, be.encode(prompts))
        v_u = be.velocity(x, t, be.encode(["", ""]))
        for s in (0.0, 1.0, 3.5):
            v = be.guided_field(prompts, text_scale=s)(x, t)
            torch.testing.assert_close(v, v_u + s * (v_c - v_u), rtol=1e-4, atol=1e-5)


def test_edit_guidance_arithmetic():
    net = _randomize(tiny(edit=True)).eval()
    be = WorldBackend(net, TOK)
    x, t, src = torch.randn(2, 3, 32, 32), torch.rand(2), torch.rand(2, 3, 32, 32)
    p = ["remove the red circle", "invert the colors"]
    with torch.no_grad():
        v_c = be.velocity(x, t, be.encode(p, src))
        v_i = be.velocity(x, t, be.encode(["", ""], src))
        v_u = be.velocity(x, t, be.encode(["", ""], None))
        v = be.guided_field(p, src, text_scale=2.0, image_scale=1.5)(x, t)
        torch.testing.assert_close(v, v_u + 1.5 * (v_i - v_u) + 2.0 * (v_c - v_i), rtol=1e-4, atol=1e-5)
        v1 = be.guided_field(p, src, text_scale=2.0, image_scale=1.0)(x, t)
        torch.testing.assert_close(v1, v_i + 2.0 * (v_c - v_i), rtol=1e-4, atol=1e-5)


def test_save_load_roundtrip(tmp_path):
    net = _randomize(tiny(edit=True)).eval()
    path = save_world_model(net, TOK, tmp_path / "m.safetensors", meta={"resolution": 32})
    net2, tok2, sampling, meta = load_world_model(path)
    assert tok2.words == TOK.words and meta["resolution"] == 32
    for (k, a), (k2, b) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_sampling_deterministic_and_in_range():
    net = _randomize(tiny()).eval()
    be = WorldBackend(net, TOK)
    a = be.sample(["a red circle", "three stars"], seed=3, steps=3)
    b = be.sample(["a red circle", "three stars"], seed=3, steps=3)
    assert a.dtype == np.uint8 and a.shape == (2, 32, 32, 3) and np.array_equal(a, b)


@pytest.mark.parametrize("edit,scales", [(False, (1.0, 1.0)), (False, (3.0, 1.0)), (True, (2.0, 1.0)),
                                         (True, (2.0, 1.5))])
def test_guided_field_rows_evaluates_the_selected_rows(edit, scales):
    """``rows=`` (the per-row truncated rollout) gives those rows of the full-batch field, in that order."""
    net = _randomize(tiny(edit=edit)).eval()
    be = WorldBackend(net, TOK)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, generator=g)
    src = torch.rand(4, 3, 32, 32, generator=g) if edit else None
    prompts = ["a red circle", "two stars", "", "a blue square left of a star"]
    field = be.guided_field(prompts, src, text_scale=scales[0], image_scale=scales[1])
    rows = torch.tensor([3, 1])
    with torch.no_grad():
        full = field(x, t)
        sub = field(x[rows], t[rows], rows=rows)
    torch.testing.assert_close(sub, full[rows], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["t2i", "t2i_v1", "edit", "local_edit", "global_edit"])
def test_shipped_sft_configs_parse_and_build(name):
    from pathlib import Path

    from danceopd.config import load_config
    from danceopd.train.sft import SFTConfig

    cfg = load_config(SFTConfig, Path(__file__).parents[2] / "configs" / "world" / f"{name}.yaml")
    if cfg.init is None:  # fresh models: the config builds the network it names
        from danceopd.train.sft import build_model

        net, _ = build_model(cfg)
        assert net.cfg.text_conv_layers == cfg.model.text_conv_layers
