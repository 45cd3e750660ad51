"""Text-to-image prompts in the six GenEval-style categories, each with machine-checkable constraints.

Underspecified attributes (colors not named, slots, background, jitter) are sampled, so one prompt has many valid
images. Constraints are plain JSON:
``{"objects": [{"shape", "color" (or None), "count", "exact"}], "relation": {"a", "b", "rel"} | None,
"background": name | None}``; checks mirror GenEval (presence; exact count for counting; relations between
object centers).
"""

from __future__ import annotations

import numpy as np

from .scene import Scene, sample_obj, sample_style
from .vocab import WorldConfig

T2I_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left_of", "right_of", "above", "below")
REL_WORDS = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}
REL_WORDS_ALT = {"left_of": "left of", "right_of": "right of", "above": "on top of", "below": "under"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}

TEMPLATES = (
    "a photo of {x}",
    "{x}",
    "an image of {x}",
    "a picture of {x}",
    "a drawing showing {x}",
    "there is {x}",
)
BG_TEMPLATES = (" on a {bg} background", " against a {bg} background", ", {bg} background")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + "es" if shape.endswith(("x", "s", "sh", "ch")) else shape + "s"


def np_phrase(shape: str, color: str | None) -> str:
    """'a red circle' / 'an orange star' / 'a square'."""
    words = f"{color} {shape}" if color else shape
    return f"{article(words)} {words}"


def _req(shape, color=None, count=1, exact=False):
    return {"shape": shape, "color": color, "count": count, "exact": exact}


def relation_holds(rel: str, a_slot: int, b_slot: int, grid: int) -> bool:
    ar, ac, br, bc = a_slot // grid, a_slot % grid, b_slot // grid, b_slot % grid
    return {"left_of": ac < bc, "right_of": ac > bc, "above": ar < br, "below": ar > br}[rel]


def _choose(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def make_t2i(rng: np.random.Generator, cfg: WorldConfig, category: str) -> tuple[str, dict, Scene]:
    """Sample (prompt, constraints, one scene satisfying them)."""
    grid, n_slots = cfg.grid, cfg.n_slots
    shapes, colors = cfg.shapes, cfg.colors
    if category == "single_object":
        s = _choose(rng, shapes)
        reqs, phrase = [_req(s)], np_phrase(s, None)
        specs = [(s, None)]
    elif category == "two_object":
        i, j = rng.choice(len(shapes), 2, replace=False)
        a, b = shapes[i], shapes[j]
        reqs, phrase = [_req(a), _req(b)], f"{np_phrase(a, None)} and {np_phrase(b, None)}"
        specs = [(a, None), (b, None)]
    elif category == "counting":
        s, n = _choose(rng, shapes), int(_choose(rng, cfg.counts))
        reqs, phrase = [_req(s, count=n, exact=True)], f"{NUMBER_WORDS[n]} {plural(s)}"
        specs = [(s, None)] * n
    elif category == "colors":
        s, c = _choose(rng, shapes), _choose(rng, colors)
        reqs, phrase = [_req(s, c)], np_phrase(s, c)
        specs = [(s, c)]
    elif category == "position":
        i, j = rng.choice(len(shapes), 2, replace=False)
        a, b = shapes[i], shapes[j]
        rel = _choose(rng, RELATIONS)
        words = (REL_WORDS if rng.random() < 0.5 else REL_WORDS_ALT)[rel]
        reqs, phrase = [_req(a), _req(b)], f"{np_phrase(a, None)} {words} {np_phrase(b, None)}"
        specs = [(a, None), (b, None)]
    elif category == "color_attr":
        i, j = rng.choice(len(shapes), 2, replace=False)
        ci, cj = rng.choice(len(colors), 2, replace=False)
        a, b, ca, cb = shapes[i], shapes[j], colors[ci], colors[cj]
        reqs, phrase = [_req(a, ca), _req(b, cb)], f"{np_phrase(a, ca)} and {np_phrase(b, cb)}"
        specs = [(a, ca), (b, cb)]
    else:
        raise ValueError(f"unknown T2I category {category!r}; expected one of {T2I_CATEGORIES}")
    relation = {"a": 0, "b": 1, "rel": rel} if category == "position" else None

    bg = _choose(rng, cfg.backgrounds)
    mention_bg = rng.random() < 0.3
    text = _choose(rng, TEMPLATES).format(x=phrase)
    if mention_bg:
        text += _choose(rng, BG_TEMPLATES).format(bg=bg)
    constraints = {"objects": reqs, "relation": relation, "background": bg if mention_bg else None}

    # one scene satisfying the constraints: place the specs, resampling slots until the relation holds
    while True:
        slots = rng.choice(n_slots, size=len(specs), replace=False)
        if relation is None or relation_holds(relation["rel"], int(slots[0]), int(slots[1]), grid):
            break
    objs = [sample_obj(rng, cfg, sl, shape=s, color=c) for (s, c), sl in zip(specs, slots)]
    scene = Scene(background=bg, style=sample_style(rng, cfg), grid=grid).with_objects(objs)
    return text, constraints, scene


def _matches(req: dict, shape: str, color: str) -> bool:
    return shape == req["shape"] and (req.get("color") is None or color == req["color"])


def check_constraints(constraints: dict, layout: tuple) -> bool:
    """Does a read layout ``(background, style, slots)`` satisfy the prompt's constraints?"""
    background, _style, slots = layout
    grid = int(round(len(slots) ** 0.5))
    if constraints.get("background") and background != constraints["background"]:
        return False
    found: list[list[int]] = []
    for req in constraints["objects"]:
        hits = [i for i, s in enumerate(slots) if s is not None and _matches(req, *s)]
        n = len(hits)
        if (req.get("exact") and n != req["count"]) or n < req["count"]:
            return False
        found.append(hits)
    rel = constraints.get("relation")
    if rel:
        a, b = found[rel["a"]], found[rel["b"]]
        if not any(relation_holds(rel["rel"], i, j, grid) for i in a for j in b if i != j):
            return False
    return True
