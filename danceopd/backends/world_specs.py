"""World model names and paths -> backends / generators. ``world:<name>`` = a shipped ShapesWorld teacher
(``danceopd/assets/teachers/<name>.safetensors``), ``shipped:<setting>_<method>`` = a shipped converged student of
the full preset (``danceopd/assets/students/``, e.g. ``shipped:A_danceopd``); otherwise a ``.safetensors`` file or
a run folder holding ``model.safetensors``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .world import WorldBackend, load_world_model

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "teachers"
STUDENT_DIR = ASSET_DIR.parent / "students"
SHIPPED = {"world:": ASSET_DIR, "shipped:": STUDENT_DIR}   # name prefix -> folder of shipped weights


def shipped_models() -> list[str]:
    """The shipped teachers (``world:*``), then the shipped converged students (``shipped:*``)."""
    return [f"{prefix}{p.stem}" for prefix, d in SHIPPED.items() for p in sorted(d.glob("*.safetensors"))]


def resolve_model_path(spec: str) -> Path:
    for prefix, folder in SHIPPED.items():
        if spec.startswith(prefix):
            p = folder / f"{spec[len(prefix):]}.safetensors"
            if not p.is_file():
                avail = ", ".join(shipped_models()) or "none shipped"
                raise UserError(f"unknown model {spec!r}; shipped models: {avail}")
            return p
    p = Path(spec)
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return p / "model.safetensors"
        raise UserError(f"{p}: no model.safetensors in this folder (is the run finished?)")
    if p.is_file():
        return p
    raise FileNotFoundError(spec)


def load_backend(spec: str, resolution: int | None = None, device="cpu") -> WorldBackend:
    try:
        path = resolve_model_path(spec)
    except FileNotFoundError:
        raise UserError(f"unknown model {spec!r}: not a shipped name (world:<name>, shipped:<setting>_<method>), file or run folder") from None
    net, tok, sampling, meta = load_world_model(path, device)
    for p in net.parameters():
        p.requires_grad_(False)
    return WorldBackend(net, tok, resolution or int(meta.get("resolution", 32)), sampling)


class WorldGenerator:
    """The evaluation-suite generator interface over a backend: only ``ex.prompt`` and the source are used."""

    def __init__(self, backend: WorldBackend, name: str, **sample_kw):
        self.backend, self.name, self.sample_kw = backend, name, sample_kw

    def generate(self, examples, sources: np.ndarray | None, seed: int) -> np.ndarray:
        return self.backend.sample([e.prompt for e in examples], sources, seed=seed, **self.sample_kw)


def load_generator(spec: str, resolution: int = 32, device="cpu", **sample_kw) -> WorldGenerator:
    return WorldGenerator(load_backend(spec, resolution, device), spec, **sample_kw)
