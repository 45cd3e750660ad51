"""Training methods on one trainer: DanceOPD and every baseline it is compared against.

Every module of this package is imported here, and each ``Method`` subclass with a ``name`` registers itself
(``base.METHODS``, and its config sections in ``base.SECTIONS``): a new method is one new file."""

import importlib
import pkgutil

from ..util.merge import merge_state_dicts
from .base import METHODS, SECTIONS, Method, MethodConfig, StepContext, TeacherField

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["METHODS", "SECTIONS", "Method", "MethodConfig", "StepContext", "TeacherField", "merge_state_dicts"]
