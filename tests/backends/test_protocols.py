"""The typed seams are real: every family and its backends implement ``backends.base.Family`` / ``Backend``, and
the distillation trainer uses them without probing (no ``hasattr``/``getattr``) and without method names."""

from __future__ import annotations

import ast
import inspect

import pytest

import danceopd.train.distill as distill
from danceopd.backends.base import Backend, Family
from danceopd.backends.registry import get_family
from danceopd.methods import METHODS


def _members(proto) -> set[str]:
    return {n for n in dir(proto) if not n.startswith("_")} | set(proto.__annotations__)


def test_world_family_and_backend_implement_the_protocols():
    fam = get_family("world")
    assert isinstance(fam, Family)
    be = fam.load_teacher("world:t2i")
    assert isinstance(be, Backend)
    student = fam.build_student("world:t2i", [be], False, None, True)
    assert isinstance(student, Backend) and student.trainable_parameters()


@pytest.mark.parametrize("name", ["sd3", "zimage", "flux_kontext"])
def test_diffusers_families_implement_the_protocols(name):
    fam = get_family(name)
    assert isinstance(fam, Family)
    missing = [m for m in _members(Backend) if not hasattr(fam.backend_cls, m) and m not in
               ("model", "resolution", "sampling")]        # instance attributes, set in __init__
    assert not missing, missing
    assert fam.configure(fam.opts).data_resolution == fam.opts.resolution


def test_the_trainer_does_not_probe_families_or_name_methods():
    tree = ast.parse(inspect.getsource(distill))
    probes = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and n.func.id in ("hasattr", "getattr")]
    assert not probes
    # method names appear only as the config's default method, never in a branch
    names = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in METHODS]
    assert names == ["danceopd"]
