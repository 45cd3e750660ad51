"""Reading free text back into the world: which words a world knows, a T2I prompt's constraints, and an edit
instruction's exact target scene.

Both parsers invert the generators (``prompts.make_t2i``, ``edits.make_edit``) by enumerating what they can write
for this world (and, for edits, this source scene) and looking the normalized text up, so a text parses exactly
when the world could have produced it.
"""

from __future__ import annotations

import functools
import re

from .edits import ADD_T, BG_T, COLOR_T, REMOVE_T, REPLACE_T, STYLE_T, describe, pos_phrase
from .prompts import (
    BG_TEMPLATES,
    NUMBER_WORDS,
    REL_WORDS,
    REL_WORDS_ALT,
    RELATIONS,
    TEMPLATES,
    article,
    np_phrase,
    plural,
)
from .scene import Obj, Scene
from .vocab import DEFAULT_WORLD, WorldConfig

_WORD = re.compile(r"[a-z]+")


def normalize(text: str) -> str:
    """Lower case, words only, single spaces (punctuation is not meaningful in world texts)."""
    return " ".join(_WORD.findall(text.lower()))


@functools.lru_cache(maxsize=8)
def known_words(cfg: WorldConfig = DEFAULT_WORLD) -> frozenset[str]:
    """Every word the world's prompts and instructions use (content words restricted to ``cfg``)."""
    texts = [*TEMPLATES, *BG_TEMPLATES, *REL_WORDS.values(), *REL_WORDS_ALT.values(), "a an and",
             *(NUMBER_WORDS[c] for c in cfg.counts), *ADD_T, *REMOVE_T, *REPLACE_T, *COLOR_T, *BG_T,
             *(pos_phrase(s, cfg.grid) for s in range(cfg.n_slots))]
    for s in cfg.styles:
        texts += [*STYLE_T[s], s]
    texts += [*cfg.shapes, *(plural(s) for s in cfg.shapes), *cfg.colors, *cfg.backgrounds]
    words = set()
    for t in texts:
        words.update(_WORD.findall(re.sub(r"\{\w+\}", " ", t.lower())))
    return frozenset(words)


def unknown_words(text: str, cfg: WorldConfig = DEFAULT_WORLD) -> list[str]:
    """Words of ``text`` outside the world's vocabulary, in order, without repeats."""
    known, out = known_words(cfg), []
    for w in _WORD.findall(text.lower()):
        if w not in known and w not in out:
            out.append(w)
    return out


def vocabulary_line(cfg: WorldConfig = DEFAULT_WORLD) -> str:
    """The world's content vocabulary on one line (what an unknown-word error lists)."""
    return (f"shapes: {', '.join(cfg.shapes)}; colors: {', '.join(cfg.colors)}; backgrounds: "
            f"{', '.join(cfg.backgrounds)}; styles: {', '.join(cfg.styles)}; counts: "
            f"{', '.join(NUMBER_WORDS[c] for c in cfg.counts)}; positions: {', '.join(cfg.position_names())}")


# ---- T2I prompts -> constraints ---------------------------------------------------------------------------------
def _req(shape, color=None, count=1, exact=False):
    return {"shape": shape, "color": color, "count": count, "exact": exact}


@functools.lru_cache(maxsize=8)
def _phrases(cfg: WorldConfig) -> dict[str, tuple[str, list[dict], dict | None]]:
    """normalized object phrase -> (category, object requirements, relation) for every phrase make_t2i writes."""
    out: dict[str, tuple[str, list[dict], dict | None]] = {}

    def put(cat, phrase, reqs, rel=None):
        out.setdefault(normalize(phrase), (cat, reqs, rel))

    for a in cfg.shapes:
        put("single_object", np_phrase(a, None), [_req(a)])
        for n in cfg.counts:
            put("counting", f"{NUMBER_WORDS[n]} {plural(a)}", [_req(a, count=n, exact=True)])
        for c in cfg.colors:
            put("colors", np_phrase(a, c), [_req(a, c)])
        for b in cfg.shapes:
            if a == b:
                continue
            put("two_object", f"{np_phrase(a, None)} and {np_phrase(b, None)}", [_req(a), _req(b)])
            for rel in RELATIONS:
                for words in (REL_WORDS[rel], REL_WORDS_ALT[rel]):
                    put("position", f"{np_phrase(a, None)} {words} {np_phrase(b, None)}", [_req(a), _req(b)],
                        {"a": 0, "b": 1, "rel": rel})
                    for ca in cfg.colors:  # colored relations: checkable, but not a category the world samples
                        for cb in cfg.colors:
                            put("position_colored", f"{np_phrase(a, ca)} {words} {np_phrase(b, cb)}",
                                [_req(a, ca), _req(b, cb)], {"a": 0, "b": 1, "rel": rel})
            for ca in cfg.colors:
                for cb in cfg.colors:
                    if ca != cb:
                        put("color_attr", f"{np_phrase(a, ca)} and {np_phrase(b, cb)}", [_req(a, ca), _req(b, cb)])
    return out


def _affixes(templates, slot: str) -> list[tuple[str, str]]:
    return [tuple(normalize(p) for p in t.split("{" + slot + "}")) for t in templates]


def parse_prompt(text: str, cfg: WorldConfig = DEFAULT_WORLD) -> tuple[str, dict] | None:
    """(GenEval-style category, constraints) of a T2I prompt the world could have written, else None. Relations
    between colored objects ("a red circle above a blue star") also parse, as category ``position_colored``."""
    t = normalize(text)
    phrases = _phrases(cfg)
    for pre, post in _affixes(TEMPLATES, "x"):
        if not (t.startswith(pre) and t.endswith(post)) or len(t) < len(pre) + len(post):
            continue
        inner = t[len(pre):len(t) - len(post)].strip()
        cands = [(inner, None)]
        for bpre, bpost in _affixes(BG_TEMPLATES, "bg"):
            for bg in cfg.backgrounds:
                tail = f"{bpre} {bg} {bpost}".strip()
                if inner.endswith(" " + tail):
                    cands.append((inner[: -len(tail) - 1].strip(), bg))
        for phrase, bg in cands:
            if phrase in phrases:
                cat, reqs, rel = phrases[phrase]
                return cat, {"objects": [dict(r) for r in reqs], "relation": rel, "background": bg}
    return None


# ---- edit instructions -> exact target --------------------------------------------------------------------------
def edit_candidates(src: Scene, cfg: WorldConfig = DEFAULT_WORLD) -> dict[str, tuple[str, Scene]]:
    """normalized instruction -> (GEdit-style category, exact target scene) for every edit make_edit could write
    on ``src``."""
    out: dict[str, tuple[str, Scene]] = {}

    def put(templates, cat, target, **kw):
        for t in templates:
            out.setdefault(normalize(t.format(**kw)), (cat, target))

    for slot in src.free_slots():
        for s in cfg.shapes:
            for c in cfg.colors:
                words = f"{c} {s}"
                new = Obj(s, c, slot, 0.0, 0.0, cfg.size)
                put(ADD_T, "subject_add", src.with_objects([*src.objects, new]),
                    np=f"{article(words)} {words}", pos=pos_phrase(slot, src.grid))
    for o in src.objects:
        d = describe(src, o)
        rest = [p for p in src.objects if p is not o]
        put(REMOVE_T, "subject_remove", src.with_objects(rest), d=d)
        for s in cfg.shapes:
            if s == o.shape:
                continue
            for c in cfg.colors:
                words = s if c == o.color else f"{c} {s}"
                tgt = src.with_objects([*rest, Obj(s, c, o.slot, o.dx, o.dy, o.size)])
                put(REPLACE_T, "subject_replace", tgt, d=d, np=f"{article(words)} {words}")
                if c == o.color:  # the color named explicitly is also a valid wording
                    put(REPLACE_T, "subject_replace", tgt, d=d, np=f"{article(c)} {c} {s}")
        for c in cfg.colors:
            if c != o.color:
                put(COLOR_T, "color_alter", src.with_objects([*rest, Obj(o.shape, c, o.slot, o.dx, o.dy, o.size)]),
                    d=d, c=c)
    for bg in cfg.backgrounds:
        if bg != src.background:
            put(BG_T, "background_change", Scene(bg, src.style, src.objects, src.grid), bg=bg)
    for st in cfg.styles:
        if st != src.style:
            put(STYLE_T[st], "style_change", Scene(src.background, st, src.objects, src.grid))
    return out


def parse_instruction(text: str, src: Scene, cfg: WorldConfig = DEFAULT_WORLD) -> tuple[str, Scene] | None:
    """(category, exact target scene) of an instruction the world could have written for ``src``, else None."""
    return edit_candidates(src, cfg).get(normalize(text))


def scene_from_layout(layout: tuple, cfg: WorldConfig = DEFAULT_WORLD) -> Scene:
    """A jitter-free scene with a layout ``(background, style, slots)`` (e.g. the judge's reading of an image)."""
    bg, style, slots = layout
    objs = [Obj(s[0], s[1], i, 0.0, 0.0, cfg.size) for i, s in enumerate(slots) if s is not None]
    return Scene(bg, style, grid=cfg.grid).with_objects(objs)

