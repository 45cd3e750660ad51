"""What the demo computes, without any web framework: models side by side on one prompt or edit, the exact
target of world edits, and the judge's verdict per constraint. ``danceopd.demo.app`` puts a page around it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..world import DEFAULT_WORLD, GLOBAL_EDITS, LOCAL_EDITS, T2I_CATEGORIES, render, sample_example
from ..world.understand import parse_instruction, parse_prompt, scene_from_layout, unknown_words

TABS = {"t2i": T2I_CATEGORIES, "local_edit": LOCAL_EDITS, "global_edit": GLOBAL_EDITS}
# per tab, the models shown first; a tuple is alternatives, the first one there wins (the shipped converged DanceOPD
# student, else the one `make demo` trained)
_DANCEOPD = ("shipped:A_danceopd", "A_danceopd")
DEFAULT_MODELS = {"t2i": ("world:t2i", _DANCEOPD), "local_edit": ("world:local_edit", "world:edit", _DANCEOPD),
                  "global_edit": ("world:global_edit", "world:edit", _DANCEOPD)}
EXAMPLES_PER_CATEGORY = 3
MAX_MODELS = 4
MAX_CACHED_MODELS = 12
MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_UPLOAD_SIDE = 2048


@dataclass
class Check:
    """One line of a verdict: what was checked, and whether it held (None = information only)."""

    text: str
    ok: bool | None = None


@dataclass
class Panel:
    title: str
    image: np.ndarray | None = None
    checks: list[Check] = field(default_factory=list)
    note: str = ""


@dataclass
class Result:
    inputs: list[Panel]
    outputs: list[Panel]
    notes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    seconds: float = 0.0
    seed: int = 0


@dataclass
class Example:
    label: str
    text: str
    example: object  # danceopd.world.Example


def examples(tab: str, world=DEFAULT_WORLD) -> list[Example]:
    """A few examples of every category of a tab (fixed seeds: the same list on every start)."""
    bucket = "t2i" if tab == "t2i" else tab
    out = []
    for ci, cat in enumerate(TABS[tab]):
        rng = np.random.default_rng((19, ci))
        for i in range(EXAMPLES_PER_CATEGORY):
            ex = sample_example(rng, world, bucket, raw_task=cat)
            out.append(Example(f"{cat} {i + 1}: {ex.prompt}", ex.prompt, ex))
    return out


def find_runs(root: Path, limit: int = 40) -> list[str]:
    """Run folders under ``root`` holding a finished ShapesWorld model (readable links first), and published
    students (``<root>/<name>/students/*.safetensors``, as ``reproduce --publish`` writes them)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for depth in ("*", "*/*", "*/cells/*/run"):
        for p in sorted(root.glob(depth)):
            if (p / "model.safetensors").is_file() and str(p) not in found:
                found.append(str(p))
    found += [str(p) for p in sorted(root.glob("*/students/*.safetensors"))]
    return found[:limit]


def check_upload(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES, max_side: int = MAX_UPLOAD_SIDE) -> np.ndarray:
    """An uploaded image as the world's 32x32 RGB (center square, box-filtered), or a UserError saying why not."""
    from PIL import Image

    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"upload rejected: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit")
    try:
        with Image.open(path) as im:
            if max(im.size) > max_side:
                raise UserError(f"upload rejected: {im.size[0]}x{im.size[1]} px is over the {max_side} px limit")
            im = im.convert("RGB")
    except UserError:
        raise
    except Exception:
        raise UserError("upload rejected: not a readable image (PNG or JPEG expected)") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(im.resize((DEFAULT_WORLD.resolution,) * 2, Image.BOX))


def t2i_checks(constraints: dict, layout: tuple) -> list[Check]:
    """The judge's reading against each constraint of a GenEval-style prompt (same rules as the suite)."""
    from ..world.prompts import REL_WORDS, _matches, relation_holds

    bg, _style, slots = layout
    grid = int(round(len(slots) ** 0.5))
    out, found = [], []
    for req in constraints["objects"]:
        hits = [i for i, s in enumerate(slots) if s is not None and _matches(req, *s)]
        found.append(hits)
        name = " ".join(x for x in (req.get("color"), req["shape"]) if x)
        need = f"exactly {req['count']}" if req.get("exact") else f"at least {req['count']}"
        ok = len(hits) == req["count"] if req.get("exact") else len(hits) >= req["count"]
        out.append(Check(f"{name}: {len(hits)} found, {need} wanted", ok))
    rel = constraints.get("relation")
    if rel:
        a, b = found[rel["a"]], found[rel["b"]]
        ok = any(relation_holds(rel["rel"], i, j, grid) for i in a for j in b if i != j)
        sa, sb = constraints["objects"][rel["a"]]["shape"], constraints["objects"][rel["b"]]["shape"]
        out.append(Check(f"{sa} {REL_WORDS[rel['rel']]} {sb}", ok))
    if constraints.get("background"):
        want = constraints["background"]
        out.append(Check(f"{want} background (read: {bg})", bg == want))
    return out


def edit_checks(read: tuple, source: tuple, target: tuple) -> list[Check]:
    """Every element the edit changes (wanted as in the target) and the untouched ones (kept as in the source)."""
    from ..eval.metrics import layout_elements

    names = ["background", "style", *DEFAULT_WORLD.position_names()]
    r, s, t = layout_elements(read), layout_elements(source), layout_elements(target)

    def show(v):
        return "empty" if v is None else " ".join(v[::-1]) if isinstance(v, tuple) else str(v)

    out = [Check(f"{names[i]}: {show(t[i])} wanted, {show(r[i])} read", r[i] == t[i])
           for i in range(len(t)) if s[i] != t[i]]
    kept = [i for i in range(len(t)) if s[i] == t[i]]
    changed = [names[i] for i in kept if r[i] != s[i]]
    out.append(Check(f"untouched: {len(kept) - len(changed)} of {len(kept)} kept"
                     + (f" (changed: {', '.join(changed)})" if changed else ""), not changed))
    return out


def describe_layout(layout: tuple) -> str:
    bg, style, slots = layout
    names = DEFAULT_WORLD.position_names()
    objs = [f"{c} {s} ({names[i]})" for i, (s, c) in ((i, v) for i, v in enumerate(slots) if v is not None)]
    return f"{bg} background" + (f", {style}" if style else "") + "; " + (", ".join(objs) or "no objects")


class Demo:
    """Models (loaded once, cached), the judge, and the three kinds of request."""

    def __init__(self, runs_root: Path | str | list = "runs", extra_models=(), threads: int | None = None):
        self.runs_roots = [Path(r) for r in ([runs_root] if isinstance(runs_root, (str, Path)) else runs_root)]
        self.extra_models = list(extra_models)
        self.threads = threads
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()
        self.examples = {tab: examples(tab) for tab in TABS}

    def example(self, tab: str, label: str | None) -> Example | None:
        return next((e for e in self.examples[tab] if e.label == label), None)

    # ---- models --------------------------------------------------------------------------------------------------
    def model_choices(self) -> list[str]:
        from ..backends.registry import shipped_models

        runs = [r for root in self.runs_roots for r in find_runs(root)]
        return list(dict.fromkeys([*shipped_models(), *self.extra_models, *runs]))

    def default_models(self, tab: str) -> list[str]:
        choices = self.model_choices()
        out = []
        for want in DEFAULT_MODELS[tab]:
            for alt in want if isinstance(want, tuple) else (want,):
                hit = [c for c in choices if c == alt or Path(c).name == alt][:1]
                if hit:
                    out += hit
                    break
        return out

    def backend(self, spec: str):
        from ..backends.registry import load_backend

        spec = spec.strip()
        with self._lock:
            if spec not in self._models:
                if len(self._models) >= MAX_CACHED_MODELS:  # forget the least recently loaded
                    self._models.pop(next(iter(self._models)))
                self._models[spec] = load_backend(spec)
            return self._models[spec]

    def warm_up(self, specs) -> None:
        """Load models and the judge ahead of the first request (called in a background thread)."""
        from ..eval.judge import load_judge

        load_judge()
        for s in specs:
            try:
                self.backend(s)
            except Exception:  # reported when used
                pass

    def _models_for(self, specs) -> list[str]:
        specs = [s.strip() for s in specs if s and s.strip()]
        specs = list(dict.fromkeys(specs))
        if not specs:
            raise UserError("choose at least one model")
        if len(specs) > MAX_MODELS:
            raise UserError(f"choose at most {MAX_MODELS} models (got {len(specs)})")
        return specs

    # ---- requests ------------------------------------------------------------------------------------------------
    def text_to_image(self, prompt: str, models, seed: int = 0) -> Result:
        t0 = time.perf_counter()
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("write a prompt (or pick an example)")
        specs = self._models_for(models)
        parsed = parse_prompt(prompt)
        res = Result([], [], unknown=unknown_words(prompt), seed=seed)
        if parsed:
            from ..eval.scenes import scene_for_constraints

            ref = scene_for_constraints(parsed[1], np.random.default_rng(seed), DEFAULT_WORLD)
            res.inputs.append(Panel("a scene that satisfies the prompt", render(ref, DEFAULT_WORLD),
                                    note=f"GenEval-style category: {parsed[0]}"))
        else:
            res.notes.append("This prompt is not in the world's GenEval-style grammar: the judge reads the images "
                             "but has no constraints to check them against.")
        imgs = [self._generate(s, prompt, None, seed) for s in specs]
        res.outputs = self._judge_t2i(specs, imgs, parsed[1] if parsed else None)
        res.seconds = time.perf_counter() - t0
        return res

    def edit(self, instruction: str, models, seed: int = 0, example: Example | None = None,
             upload: str | Path | None = None) -> Result:
        t0 = time.perf_counter()
        instruction = (instruction or "").strip()
        if not instruction:
            raise UserError("write an instruction (or pick an example)")
        specs = self._models_for(models)
        res = Result([], [], unknown=unknown_words(instruction), seed=seed)
        if upload:
            from ..eval.judge import load_judge

            src_img = check_upload(upload)
            src_scene = scene_from_layout(load_judge().read(src_img[None])[0])
            src_title, exact = "input (your upload, 32x32)", False
        elif example is not None:
            src_scene, src_title, exact = example.example.source, "input", True
            src_img = render(src_scene, DEFAULT_WORLD)
        else:
            raise UserError("pick an example input image or upload one")
        parsed = parse_instruction(instruction, src_scene)
        if exact and example is not None and instruction == example.text:
            parsed = (example.example.raw_task, example.example.target)
        res.inputs.append(Panel(src_title, src_img, note=describe_layout(src_scene.layout())))
        if parsed:
            title = "exact target" if exact else "target (from the judge's reading of the upload)"
            res.inputs.append(Panel(title, render(parsed[1], DEFAULT_WORLD),
                                    note=f"GEdit-style category: {parsed[0]}"))
        else:
            res.notes.append("This instruction is not one the world can write for this input: no exact target, "
                             "so only image quality (PQ) is judged.")
        imgs = [self._generate(s, instruction, src_img, seed) for s in specs]
        res.outputs = self._judge_edit(specs, imgs, src_scene, parsed[1] if parsed else None)
        res.seconds = time.perf_counter() - t0
        return res

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _generate(self, spec: str, text: str, source: np.ndarray | None, seed: int):
        """uint8 image, or a string saying why this model produced none."""
        import torch

        try:
            be = self.backend(spec)
        except UserError as e:
            return str(e)
        if source is not None and not be.is_edit:
            return "a text-to-image model: it has no image input"
        n = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return be.sample([text], None if source is None else source[None], seed=seed)[0]
        finally:
            torch.set_num_threads(n)

    @staticmethod
    def _read(imgs):
        from ..eval.judge import load_judge
        from ..eval.suite import READABLE_PQ

        ok = [i for i, im in enumerate(imgs) if isinstance(im, np.ndarray)]
        judge = load_judge()
        reading = judge.run(np.stack([imgs[i] for i in ok])) if ok else None
        out = {}
        for k, i in enumerate(ok):
            pq = float(judge.pq_from_quality(reading.quality[k : k + 1])[0])
            out[i] = (reading.layouts[k], pq, pq >= READABLE_PQ)
        return out

    def _panels(self, specs, imgs, checks_for) -> list[Panel]:
        """One panel per model: its image, ``checks_for(layout, pq, readable)`` and what the judge read (or the
        model's note instead of an image)."""
        reads, panels = self._read(imgs), []
        for i, (spec, img) in enumerate(zip(specs, imgs)):
            if i not in reads:
                panels.append(Panel(spec, None, note=img))
                continue
            layout, pq, readable = reads[i]
            panels.append(Panel(spec, img, checks_for(layout, pq, readable),
                                note=f"judge reads: {describe_layout(layout)}"))
        return panels

    def _judge_t2i(self, specs, imgs, constraints) -> list[Panel]:
        from ..eval.metrics import geneval_pass

        def checks_for(layout, pq, readable):
            checks = [Check(f"PQ {pq:.1f} (readable image)", readable)]
            if constraints:
                checks += t2i_checks(constraints, layout)
                ok = readable and geneval_pass(constraints, layout)
                checks.insert(0, Check("GenEval-style: PASS" if ok else "GenEval-style: FAIL", ok))
            return checks

        return self._panels(specs, imgs, checks_for)

    def _judge_edit(self, specs, imgs, src_scene, target) -> list[Panel]:
        from ..eval.metrics import edit_scores, overall

        def checks_for(layout, pq, readable):
            if target is None:
                return [Check(f"PQ {pq:.1f} (readable image)", readable)]
            sc = edit_scores(layout, src_scene.layout(), target.layout())["sc"] if readable else 0.0
            o = overall(sc, pq)
            return [Check(f"GEdit-style: SC {sc:.1f}  PQ {pq:.1f}  O {o:.1f}", o >= 5),
                    *edit_checks(layout, src_scene.layout(), target.layout())]

        return self._panels(specs, imgs, checks_for)
