"""World model names and paths -> backends / generators. ``world:<name>`` = a shipped ShapesWorld model
(``danceopd/assets/teachers/<name>.safetensors``); otherwise a ``.safetensors`` file or a run folder holding
``model.safetensors``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .world import WorldBackend, load_world_model

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "teachers"


def shipped_models() -> list[str]:
    return sorted(f"world:{p.stem}" for p in ASSET_DIR.glob("*.safetensors"))


def resolve_model_path(spec: str) -> Path:
    if spec.startswith("world:"):
        p = ASSET_DIR / f"{spec.split(':', 1)[1]}.safetensors"
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
        raise UserError(f"unknown model {spec!r}: not a shipped name (world:<name>), file or run folder") from None
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
