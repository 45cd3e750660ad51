"""The family registry: ``backend: <name>`` in a config -> a ``Family`` (``backends.base``). The ``world`` family
is registered here; every other family registers itself when its module is imported (``get_family`` imports
``danceopd.backends.<name>`` or ``danceopd.backends.diffusers.families.<name>`` on first use), so adding a family never
edits this file.

Model names and paths of the world family (``world:<name>``, files, run folders) are ``backends.world_specs``;
they are re-exported here, where the CLI, the report and the scripts have always looked for them."""

from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Family
from .world_family import WorldFamily
from .world_specs import (  # noqa: F401  (re-exported)
    ASSET_DIR,
    WorldGenerator,
    load_backend,
    load_generator,
    resolve_model_path,
    shipped_models,
)

FAMILIES: dict[str, Family] = {}
FAMILY_PACKAGES = ("danceopd.backends", "danceopd.backends.diffusers.families")


def register_family(family: Family) -> None:
    FAMILIES[family.name] = family


def get_family(name: str) -> Family:
    for pkg in FAMILY_PACKAGES:
        if name in FAMILIES:
            break
        try:  # optional families register on import
            importlib.import_module(f"{pkg}.{name}")
        except ImportError:
            pass
    if name not in FAMILIES:
        raise UserError(f"backend {name!r} unknown; available: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


register_family(WorldFamily())
