"""Checks of the metrics themselves: the judge's accuracy on fresh scenes (never drawn by training)."""

from __future__ import annotations

import numpy as np

from ..world.render import render
from ..world.sampler import sample_example
from ..world.scene import Scene
from ..world.vocab import WorldConfig
from .judge import Judge


def fresh_scenes(cfg: WorldConfig, n: int, seed: int) -> list[Scene]:
    """T2I targets and edit sources and targets over all buckets, drawn from ``default_rng(seed)`` (training uses
    ``default_rng((TRAIN_STREAM, seed))``, a different stream)."""
    rng = np.random.default_rng(seed)
    out: list[Scene] = []
    while len(out) < n:
        ex = sample_example(rng, cfg, "t2i" if rng.random() < 0.5 else "edit")
        out.append(ex.target)
        if ex.source is not None and len(out) < n:
            out.append(ex.source)
    return out


def judge_accuracy(judge: Judge, cfg: WorldConfig, n: int = 2000, seed: int = 123456789,
                   resolution: int | None = None) -> dict[str, float]:
    """Accuracy on clean renders: ``slot_<i>`` per slot, ``slot_min``, ``background``, ``style`` and ``layout``
    (the whole reading exact)."""
    scenes = fresh_scenes(cfg, n, seed)
    res = resolution or cfg.resolution
    images = np.stack([render(s, cfg, res) for s in scenes])
    read = judge.read(images)
    truth = [s.layout() for s in scenes]
    slots_ok = np.array([[a == b for a, b in zip(r[2], t[2])] for r, t in zip(read, truth)])
    out = {f"slot_{i}": float(slots_ok[:, i].mean()) for i in range(slots_ok.shape[1])}
    out["slot_min"] = float(slots_ok.mean(0).min())
    out["background"] = float(np.mean([r[0] == t[0] for r, t in zip(read, truth)]))
    out["style"] = float(np.mean([r[1] == t[1] for r, t in zip(read, truth)]))
    out["layout"] = float(np.mean([r == t for r, t in zip(read, truth)]))
    return out
