"""The generator interface the suite evaluates, and the calibration generators that anchor every metric.

``generate(examples, sources, seed) -> uint8 [B, H, W, 3]``: text-to-image when ``sources`` is None (a real model
may use only ``ex.prompt``), editing otherwise (``sources`` uint8 [B, H, W, 3] plus ``ex.prompt`` as the
instruction). Calibration generators read the ground truth on purpose:

* ``oracle``: edits -> the exact target render; T2I -> a fresh render satisfying the prompt (what the prompt
  leaves open is redrawn from the seed, so the oracle is a perfect model, not a copy of the reference set).
* ``identity``: edits -> the source unchanged; T2I -> a plain background (random color, no objects).
* ``noise``: uniform random pixels.
* ``degrade:<level>``: the oracle, then Gaussian blur (sigma = 1.2 * level px at 32 px, scaled with resolution)
  and Gaussian noise (std = 0.10 * level of full range), quantized. ``level`` is a float in [0, 1] or an integer
  level 1..4 (= 0.25, 0.5, 0.75, 1.0); integer spellings ("1") take precedence over floats ("1.0").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import UserError
from ..world.render import render
from ..world.sampler import Example
from ..world.scene import Scene
from ..world.vocab import DEFAULT_WORLD, WorldConfig
from .imageops import degrade
from .scenes import scene_for_constraints

UNKNOWN_MODEL = ("unknown model {spec!r}; expected a calibration generator (oracle, identity, noise, "
                 "degrade:<level>), a model name like world:t2i, or a checkpoint path")


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, examples: list[Example], sources: np.ndarray | None, seed: int) -> np.ndarray: ...


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng((int(seed) & 0xFFFFFFFFFFFF, tag))


class _Calibration:
    def __init__(self, name: str, resolution: int, cfg: WorldConfig = DEFAULT_WORLD):
        self.name = name
        self.resolution = resolution
        self.cfg = cfg.with_resolution(resolution)

    def _render(self, scene: Scene) -> np.ndarray:
        return render(scene, self.cfg, self.resolution)

    def _empty(self, n: int) -> np.ndarray:
        return np.zeros((n, self.resolution, self.resolution, 3), np.uint8)


class OracleGenerator(_Calibration):
    def __init__(self, resolution: int = 32, cfg: WorldConfig = DEFAULT_WORLD):
        super().__init__("oracle", resolution, cfg)

    def generate(self, examples, sources, seed):
        if not examples:
            return self._empty(0)
        if sources is not None:
            return np.stack([self._render(ex.target) for ex in examples])
        rng = _rng(seed, 11)
        return np.stack([self._render(scene_for_constraints(ex.constraints, rng, self.cfg)) for ex in examples])


class IdentityGenerator(_Calibration):
    def __init__(self, resolution: int = 32, cfg: WorldConfig = DEFAULT_WORLD):
        super().__init__("identity", resolution, cfg)

    def generate(self, examples, sources, seed):
        if sources is not None:
            return np.array(sources, dtype=np.uint8, copy=True)
        rng = _rng(seed, 12)
        bgs = self.cfg.backgrounds
        out = [self._render(Scene(background=bgs[int(rng.integers(len(bgs)))], grid=self.cfg.grid)) for _ in examples]
        return np.stack(out) if out else self._empty(0)


class NoiseGenerator(_Calibration):
    def __init__(self, resolution: int = 32, cfg: WorldConfig = DEFAULT_WORLD):
        super().__init__("noise", resolution, cfg)

    def generate(self, examples, sources, seed):
        r = self.resolution
        return _rng(seed, 13).integers(0, 256, size=(len(examples), r, r, 3), dtype=np.uint8)


class DegradeGenerator(_Calibration):
    def __init__(self, level: float, resolution: int = 32, cfg: WorldConfig = DEFAULT_WORLD, name: str | None = None):
        super().__init__(name or f"degrade:{level:g}", resolution, cfg)
        self.level = float(level)
        self.oracle = OracleGenerator(resolution, cfg)

    def generate(self, examples, sources, seed):
        clean = self.oracle.generate(examples, sources, seed)
        return degrade(clean, self.level, _rng(seed, 14)) if len(clean) else clean


def parse_degrade_level(text: str) -> float:
    t = text.strip()
    if t in ("1", "2", "3", "4"):
        return int(t) / 4
    try:
        v = float(t)
    except ValueError:
        v = float("nan")
    if not 0.0 <= v <= 1.0:  # also rejects nan
        raise UserError(f"degrade level {text!r} must be a number in [0, 1] or an integer level 1..4")
    return v


def calibration_generator(spec: str, resolution: int = 32) -> Generator | None:
    """The calibration generator named by ``spec``, or None when ``spec`` is not a calibration name."""
    s = spec.strip()
    if s == "oracle":
        return OracleGenerator(resolution)
    if s == "identity":
        return IdentityGenerator(resolution)
    if s == "noise":
        return NoiseGenerator(resolution)
    if s == "degrade":
        raise UserError("degrade needs a level: degrade:<level> with level in [0, 1] or an integer 1..4")
    if s.startswith("degrade:"):
        return DegradeGenerator(parse_degrade_level(s.split(":", 1)[1]), resolution, name=s)
    return None


def resolve_generator(spec: str, resolution: int, **model_kw) -> Generator:
    """Calibration names first; otherwise ``danceopd.backends.registry.load_generator(spec, resolution,
    **model_kw)`` (``device=``, sampler overrides such as ``text_scale=``)."""
    gen = calibration_generator(spec, resolution)
    if gen is not None:
        return gen
    try:
        from ..backends.registry import load_generator
    except ImportError:
        raise UserError(UNKNOWN_MODEL.format(spec=spec)) from None
    try:
        return load_generator(spec, resolution, **model_kw)
    except (KeyError, FileNotFoundError):
        raise UserError(UNKNOWN_MODEL.format(spec=spec)) from None
    except UserError as e:  # the registry's own "unknown model" lacks the calibration names
        if str(e).startswith("unknown model") and not spec.startswith("world:"):
            raise UserError(UNKNOWN_MODEL.format(spec=spec)) from None
        raise
