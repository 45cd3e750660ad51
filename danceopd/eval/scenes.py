"""Fresh scenes for a T2I prompt's constraints (the oracle's T2I images and the FID reference set), and
captions of whole scenes (the CLIP score of edit outputs against their exact target).

``scene_for_constraints`` draws what the prompt leaves open (colors not named, slots, jitter, background when
not named, style) exactly as ``world.prompts.make_t2i`` does, so a fresh scene is another sample from the same
distribution as the prompt's own target scene.
"""

from __future__ import annotations

import numpy as np

from ..world.prompts import NUMBER_WORDS, np_phrase, plural, relation_holds
from ..world.scene import Scene, sample_obj, sample_style
from ..world.vocab import WorldConfig


def scene_for_constraints(constraints: dict, rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    specs: list[tuple[str, str | None]] = []
    first: list[int] = []  # index in specs of each requirement's first object (what a relation refers to)
    for req in constraints["objects"]:
        first.append(len(specs))
        specs += [(req["shape"], req.get("color"))] * int(req.get("count", 1))
    if len(specs) > cfg.n_slots:
        raise ValueError(f"constraints need {len(specs)} objects but the grid has {cfg.n_slots} slots")
    rel = constraints.get("relation")
    for _ in range(10_000):
        slots = rng.choice(cfg.n_slots, size=len(specs), replace=False)
        if rel is None or relation_holds(rel["rel"], int(slots[first[rel["a"]]]), int(slots[first[rel["b"]]]),
                                         cfg.grid):
            break
    else:  # pragma: no cover - every relation has solutions on a grid >= 2
        raise ValueError(f"cannot place relation {rel}")
    objs = [sample_obj(rng, cfg, sl, shape=s, color=c) for (s, c), sl in zip(specs, slots)]
    bg = constraints.get("background") or cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    return Scene(background=bg, style=sample_style(rng, cfg), grid=cfg.grid).with_objects(objs)


def scene_caption(scene: Scene) -> tuple[str, dict]:
    """(caption, constraints) of a whole scene: every (shape, color) with its count, the background and the style,
    e.g. "two red circles and a blue star on a gray background, outline". The constraints (exact counts, the
    background) are what ``check_constraints`` accepts, so they also say which other images fit the caption."""
    counts: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        counts[(o.shape, o.color)] = counts.get((o.shape, o.color), 0) + 1
    parts = [np_phrase(s, c) if k == 1 else f"{NUMBER_WORDS.get(k, str(k))} {c} {plural(s)}"
             for (s, c), k in counts.items()]
    text = f"{' and '.join(parts)} on a {scene.background} background" if parts else f"a {scene.background} background"
    if scene.style:
        text += f", {scene.style}"
    reqs = [{"shape": s, "color": c, "count": k, "exact": True} for (s, c), k in counts.items()]
    return text, {"objects": reqs, "relation": None, "background": scene.background}
