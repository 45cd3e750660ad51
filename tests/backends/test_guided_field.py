"""The one CFG implementation the engines use (backends.base.guided_field over core.cfg): one batched forward
per call, the T2I and InstructPix2Pix formulas, per-row evaluation."""

from dataclasses import dataclass

import torch

from danceopd.backends.base import guided_field
from danceopd.core import cfg_combine, cfg_combine_edit


@dataclass
class Cond:
    text: torch.Tensor     # [B] 1 = prompt, 0 = empty prompt
    image: torch.Tensor    # [B] 1 = source image, 0 = none

    def cat(self, o):
        return Cond(torch.cat([self.text, o.text]), torch.cat([self.image, o.image]))

    def select(self, rows):
        return Cond(self.text[rows], self.image[rows])


class Fake:
    """v = x * (1 + 2 [prompt] + 5 [source]) + t: an analytic field whose conditions are visible in its output."""

    def __init__(self):
        self.calls = []

    def encode(self, prompts, sources=None):
        B = len(prompts)
        return Cond(torch.tensor([float(p != "") for p in prompts]),
                    torch.ones(B) if sources is not None else torch.zeros(B))

    def velocity(self, x, t, cond):
        self.calls.append(len(x))
        return x * (1 + 2 * cond.text + 5 * cond.image)[:, None] + t[:, None]


def test_t2i_and_edit_guidance_in_one_forward_per_call():
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    be = Fake()
    f = guided_field(be, ["a", "b", "c"], None, 3.0, 1.0)
    v_c, v_u = x * 3 + t[:, None], x + t[:, None]
    torch.testing.assert_close(f(x, t), cfg_combine(v_c, v_u, 3.0))
    assert be.calls == [6]                                  # cond and uncond batched together
    src = torch.zeros(3, 4)
    f = guided_field(be, ["a", "b", "c"], src, 2.0, 1.5)
    v_full, v_img = x * 8 + t[:, None], x * 6 + t[:, None]
    torch.testing.assert_close(f(x, t), cfg_combine_edit(v_full, v_img, v_u, 2.0, 1.5))
    assert be.calls[-1] == 9
    assert guided_field(be, ["a"] * 3, src, 1.0, 1.0)(x, t).equal(v_full)   # no guidance: one plain pass
    rows = torch.tensor([2, 0])                              # per-row evaluation keeps each row's conditions
    torch.testing.assert_close(f(x[rows], t[rows], rows=rows), f(x, t)[rows])
