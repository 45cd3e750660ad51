"""One module per diffusers family (``sd3``, ``zimage``, ``flux_kontext``): a thin file declaring the family's
conventions as data (pipeline / transformer class names, default sampler, LoRA targets) and its transformer
call; it registers itself in ``backends.registry`` when imported. Adding a family is one file here (plus its
tiny-pipeline builder for the tests)."""

from __future__ import annotations

import importlib
import pkgutil


def names() -> list[str]:
    """The family modules here (not imported)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def load_all() -> list[str]:
    """Import (register) every family here; returns their names."""
    for n in names():
        importlib.import_module(f"{__name__}.{n}")
    return names()
