"""Row-parallel model calls (danceopd.backends.rowsplit): same numbers as the batched call, gradients included."""

import torch

from danceopd.backends.rowsplit import MIN_ROWS, chunks, row_parallel
from danceopd.backends.world import WorldBackend
from danceopd.backends.world_model import WorldNetConfig, WorldUNet
from danceopd.world import WorldTokenizer


def test_chunks_cover_rows_in_order():
    for n in (1, 3, 4, 7, 8, 31, 32, 100):
        for w in (1, 2, 3, 16):
            parts = chunks(n, w)
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            assert len(parts) <= w and (len(parts) == 1 or min(p.stop - p.start for p in parts) >= MIN_ROWS)


def test_row_parallel_concatenates_in_order_and_keeps_grad_mode():
    x = torch.arange(20.0, requires_grad=True)
    y = row_parallel(lambda s: x[s] * 2, 20, 3)
    assert torch.equal(y, x.detach() * 2) and y.requires_grad
    with torch.no_grad():
        assert not row_parallel(lambda s: x[s] * 2, 20, 3).requires_grad


def _backend(edit: bool) -> WorldBackend:
    torch.manual_seed(0)
    tok = WorldTokenizer()
    net = WorldUNet(WorldNetConfig(vocab_size=tok.vocab_size, edit=edit, channels=(16, 32), attn_levels=(1,),
                                   groups=4, text_conv_layers=1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)   # zero-init outputs would make every comparison trivial
    return WorldBackend(net, tok, 16)


def test_world_velocity_split_equals_batched_with_gradients():
    for edit in (False, True):
        be = _backend(edit)
        B = 12
        x, t = torch.randn(B, 3, 16, 16), torch.rand(B)
        src = torch.randn(B, 3, 16, 16) if edit else None
        outs, grads, scalar_t = [], [], []
        for workers in (1, 3):
            cond = be.encode(["a red circle", "a blue star on the left"] * (B // 2), src)
            be.workers = workers
            be.net.zero_grad(set_to_none=True)
            v = be.velocity(x, t, cond)
            (v ** 2).mean().backward()
            outs.append(v.detach())
            grads.append(torch.cat([p.grad.flatten() for p in be.net.parameters() if p.grad is not None]))
            with torch.no_grad():   # a 0-dim t (one time for the whole batch) too
                scalar_t.append(be.velocity(x, t[0], cond))
        assert outs[0].abs().max() > 0
        torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scalar_t[1], scalar_t[0], atol=1e-5, rtol=1e-4)


def test_world_velocity_split_is_deterministic():
    be = _backend(True)
    be.workers = 2
    x, t = torch.randn(16, 3, 16, 16), torch.rand(16)
    cond = be.encode(["a green square"] * 16, torch.randn(16, 3, 16, 16))
    with torch.no_grad():
        assert torch.equal(be.velocity(x, t, cond), be.velocity(x, t, cond))


def test_parallel_backward_with_frozen_text_matches_and_is_deterministic():
    """The student's usual step (text encoder frozen): backward runs per chunk in the workers, same gradients
    as the batched call, and bitwise the same on every repeat."""
    be = _backend(True)
    for p in be.net.text.parameters():
        p.requires_grad_(False)
    B = 16
    x, t, src = torch.randn(B, 3, 16, 16), torch.rand(B), torch.randn(B, 3, 16, 16)
    with torch.no_grad():
        cond = be.encode(["a red circle left of a blue star"] * B, src)
    grads = {}
    for workers, rep in ((1, 0), (2, 0), (2, 1)):
        be.workers = workers
        be.net.zero_grad(set_to_none=True)
        v = be.velocity(x, t, cond)
        assert (type(v.grad_fn).__name__ == "_RowsWithGradBackward") == (workers > 1)
        ((v - 1) ** 2).mean().backward()
        grads[(workers, rep)] = torch.cat([p.grad.flatten() for p in be.net.parameters() if p.requires_grad])
    torch.testing.assert_close(grads[(2, 0)], grads[(1, 0)], atol=1e-6, rtol=1e-4)
    assert torch.equal(grads[(2, 0)], grads[(2, 1)])
