"""Edit triples (source scene, instruction, exact target scene) in the six GEdit-style categories.

Untouched content keeps exactly the same jitter, so the target differs from the source only where the
instruction says. ``local_edit`` = subject add / remove / replace / color; ``global_edit`` = background / style.
"""

from __future__ import annotations

import numpy as np

from .prompts import article
from .scene import Obj, Scene, sample_obj, sample_scene
from .vocab import WorldConfig

EDIT_CATEGORIES = ("subject_add", "subject_remove", "subject_replace", "color_alter", "background_change",
                   "style_change")
LOCAL_EDITS = EDIT_CATEGORIES[:4]
GLOBAL_EDITS = EDIT_CATEGORIES[4:]

POS_PHRASES_3 = {
    0: "in the top left corner", 1: "at the top", 2: "in the top right corner",
    3: "on the left", 4: "in the center", 5: "on the right",
    6: "in the bottom left corner", 7: "at the bottom", 8: "in the bottom right corner",
}
ADD_T = ("add {np} {pos}", "put {np} {pos}", "place {np} {pos}", "insert {np} {pos}", "draw {np} {pos}")
REMOVE_T = ("remove the {d}", "delete the {d}", "take away the {d}", "get rid of the {d}", "erase the {d}")
REPLACE_T = ("replace the {d} with {np}", "swap the {d} for {np}", "turn the {d} into {np}",
             "change the {d} into {np}")
COLOR_T = ("make the {d} {c}", "change the color of the {d} to {c}", "recolor the {d} {c}", "paint the {d} {c}",
           "turn the {d} {c}")
BG_T = ("change the background to {bg}", "make the background {bg}", "use a {bg} background",
        "replace the background with {bg}", "set the background color to {bg}")
STYLE_T = {
    "outline": ("turn it into an outline drawing", "make it a line sketch", "draw only the outlines"),
    "invert": ("invert the colors", "make it a color negative", "invert the image"),
    "tint": ("give it a warm tint", "apply a warm sepia filter", "make it look warm and vintage"),
    "scanlines": ("add scanlines", "make it look like an old CRT screen", "apply a scanline effect"),
}


def pos_phrase(slot: int, grid: int) -> str:
    if grid == 3:
        return POS_PHRASES_3[slot]
    return f"in row {slot // grid + 1}, column {slot % grid + 1}"


def describe(scene: Scene, o: Obj) -> str:
    """A phrase naming ``o`` uniquely in ``scene``: 'red circle', or 'red circle in the top left corner'."""
    same = [p for p in scene.objects if p.shape == o.shape and p.color == o.color]
    base = f"{o.color} {o.shape}"
    return base if len(same) == 1 else f"{base} {pos_phrase(o.slot, scene.grid)}"


def _choose(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def make_edit(rng: np.random.Generator, cfg: WorldConfig, category: str) -> tuple[str, Scene, Scene, dict]:
    """Sample (instruction, source scene, exact target scene, edit info) for ``category``."""
    grid = cfg.grid
    if category == "subject_add":
        src = sample_scene(rng, cfg, n_objects=int(rng.integers(0, cfg.max_objects)))
        slot = int(_choose(rng, src.free_slots()))
        new = sample_obj(rng, cfg, slot)
        words = f"{new.color} {new.shape}"
        text = _choose(rng, ADD_T).format(np=f"{article(words)} {words}", pos=pos_phrase(slot, grid))
        tgt = src.with_objects([*src.objects, new])
        info = {"slots": [slot]}
    elif category in ("subject_remove", "subject_replace", "color_alter"):
        src = sample_scene(rng, cfg, n_objects=int(rng.integers(1, cfg.max_objects + 1)))
        o = _choose(rng, src.objects)
        d = describe(src, o)
        rest = [p for p in src.objects if p is not o]
        if category == "subject_remove":
            text = _choose(rng, REMOVE_T).format(d=d)
            tgt = src.with_objects(rest)
        elif category == "subject_replace":
            shape = _choose(rng, [s for s in cfg.shapes if s != o.shape])
            keep_color = rng.random() < 0.4
            color = o.color if keep_color else _choose(rng, cfg.colors)
            words = shape if keep_color else f"{color} {shape}"
            text = _choose(rng, REPLACE_T).format(d=d, np=f"{article(words)} {words}")
            tgt = src.with_objects([*rest, Obj(shape, color, o.slot, o.dx, o.dy, o.size)])
        else:
            color = _choose(rng, [c for c in cfg.colors if c != o.color])
            text = _choose(rng, COLOR_T).format(d=d, c=color)
            tgt = src.with_objects([*rest, Obj(o.shape, color, o.slot, o.dx, o.dy, o.size)])
        info = {"slots": [o.slot]}
    elif category == "background_change":
        src = sample_scene(rng, cfg)
        bg = _choose(rng, [b for b in cfg.backgrounds if b != src.background])
        text = _choose(rng, BG_T).format(bg=bg)
        tgt = Scene(background=bg, style=src.style, objects=src.objects, grid=grid)
        info = {"slots": []}
    elif category == "style_change":
        src = sample_scene(rng, cfg, style=None if rng.random() < 0.8 else "sample")
        style = _choose(rng, [s for s in cfg.styles if s != src.style])
        text = _choose(rng, STYLE_T[style])
        tgt = Scene(background=src.background, style=style, objects=src.objects, grid=grid)
        info = {"slots": []}
    else:
        raise ValueError(f"unknown edit category {category!r}; expected one of {EDIT_CATEGORIES}")
    return text, src, tgt, {"category": category, **info}
