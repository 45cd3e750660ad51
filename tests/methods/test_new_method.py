"""Adding a method is one new module: a ``Method`` subclass with its own typed config section registers itself on
import, the distillation config accepts its section, and the one trainer trains it (2 steps, through the CLI)."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
from tinycfg import make_tiny_teachers, tiny_distill_yaml

from danceopd.cli import main
from danceopd.methods import base as methods_base

TOY = '''
"""A toy method: off-policy regression onto the routed teacher at a fixed time, loss scaled by its section."""
from dataclasses import dataclass, field

import torch

from danceopd.core import interpolate, velocity_mse
from danceopd.methods.base import Method, student_sources


@dataclass
class ToySection:
    t: float = 0.5
    scale: float = 1.0

    def validate(self):
        if not 0 < self.t < 1:
            raise ValueError("toy.t must be in (0, 1)")


@dataclass
class ToyConfig:
    toy: ToySection = field(default_factory=ToySection)


class Toy(Method[ToyConfig]):
    name = "toy"
    Config = ToyConfig

    def loss(self, ctx, route, batch):
        s, cfg = ctx.student, ctx.cfg.toy
        x_0 = s.encode_images(batch.x_0)
        t = torch.full((len(x_0),), cfg.t)
        x = interpolate(x_0, torch.randn_like(x_0), t)
        src = student_sources(ctx, batch)
        with torch.no_grad():
            v_teacher = ctx.teachers[route.teacher].field(batch.prompts, src)(x, t)
        v = s.velocity(x, t, s.encode(batch.prompts, src))
        return cfg.scale * velocity_mse(v.float(), v_teacher.float()), {"toy_scale": cfg.scale}
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """Write the toy method as a module of its own and import it; the registries are restored afterwards."""
    before = {reg_id: set(reg) for reg_id, reg in (("m", methods_base.METHODS), ("s", methods_base.SECTIONS))}
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_method", None)
    try:
        yield importlib.import_module("toy_method")
    finally:
        sys.modules.pop("toy_method", None)
        for k in set(methods_base.METHODS) - before["m"]:
            del methods_base.METHODS[k]
        for k in set(methods_base.SECTIONS) - before["s"]:
            del methods_base.SECTIONS[k]


def test_unregistered_method_and_section_are_rejected(tmp_path):
    teachers = make_tiny_teachers(tmp_path / "teachers")
    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "toy", toy={"scale": 2.0})
    assert main(["distill", "--config", str(cfg), "--out", str(tmp_path / "run")]) != 0


def test_a_new_method_module_trains_two_steps(toy_module, tmp_path):
    assert methods_base.METHODS["toy"] is toy_module.Toy
    assert methods_base.SECTIONS["toy"] is toy_module.ToySection
    teachers = make_tiny_teachers(tmp_path / "teachers")
    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "toy", toy={"scale": 2.0},
                            train={"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2,
                                   "threads": 1, "routing": "hard"})
    out = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--out", str(out)]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r[f"toy_scale/{r['route']}"] == 2.0 for r in recs)   # the method read its own section
    assert (out / "model.safetensors").is_file()
    # the section is typed: a bad value is a one-line config error naming the key
    bad = tiny_distill_yaml(tmp_path / "bad.yaml", teachers, "A", "toy", toy={"t": 2.0})
    assert main(["distill", "--config", str(bad), "--out", str(tmp_path / "bad")]) != 0
