"""The suite runner: fixed prompt / edit sets derived from the seed, one generator, every score.

``evaluate(generator, suite, n, seed)`` returns the scores dict (see docs/evaluation.md). ``n`` is the number of
images per category: T2I uses ceil(n / 4) prompts per category with 4 images each (GenEval's protocol; n images
of one prompt when n < 4), edits use n examples per category. The default n = 100 keeps one judge error in a
category above the 0.99 mark and a full evaluation of a 15 images/s model under 2 minutes on 2 cores. Sets are prefix-stable: the first k prompts of a category are the same for every n >= k.
Everything except ``timings`` is a deterministic function of (generator, suite, n, seed, resolution, batch_size).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..world.edits import EDIT_CATEGORIES, GLOBAL_EDITS, LOCAL_EDITS
from ..world.prompts import T2I_CATEGORIES
from ..world.render import render
from ..world.sampler import Example, sample_example
from ..world.vocab import DEFAULT_WORLD, WorldConfig
from .clip import load_clip
from .imageops import check_images, torch_threads
from .judge import load_judge
from .metrics import clip_score, edit_scores, frechet_distance, geneval_pass, overall, preservation
from .scenes import scene_caption, scene_for_constraints
from .standard import standard_metrics

SUITES = ("t2i", "edit", "all")
DEFAULT_N = 100
IMAGES_PER_PROMPT = 4
DEFAULT_BATCH = 64
GEDIT_LABELS = {"subject_add": "subj-add", "subject_replace": "subj-rep", "background_change": "bg-chg",
                "style_change": "style-chg", "color_alter": "color-alt", "subject_remove": "subj-rem"}
GENEVAL_LABELS = {"single_object": "single", "two_object": "two", "counting": "count", "colors": "color",
                  "position": "position", "color_attr": "color-attr"}
_T2I_TAG, _EDIT_TAG, _REF_TAG = 1, 2, 3
# The judge reads an image only if the critic sees a world picture at all (PQ >= READABLE_PQ); an unreadable image
# fails every T2I check and scores SC = 0 (pure noise must not "contain a circle").
READABLE_PQ = 2.0


@dataclass
class Sample:
    """One scored image (for contact sheets)."""

    kind: str
    category: str
    prompt: str
    image: np.ndarray
    source: np.ndarray | None = None
    target: np.ndarray | None = None
    scores: dict = field(default_factory=dict)


def t2i_plan(n: int) -> tuple[int, int]:
    """(prompts per category, images per prompt) for ``n`` images per category."""
    ipp = min(IMAGES_PER_PROMPT, n)
    return math.ceil(n / ipp), ipp


def t2i_prompts(seed: int, n_prompts: int, cfg: WorldConfig = DEFAULT_WORLD) -> dict[str, list[Example]]:
    out = {}
    for ci, cat in enumerate(T2I_CATEGORIES):
        rng = np.random.default_rng((seed, _T2I_TAG, ci))
        out[cat] = [sample_example(rng, cfg, "t2i", raw_task=cat) for _ in range(n_prompts)]
    return out


def edit_examples(seed: int, n: int, cfg: WorldConfig = DEFAULT_WORLD) -> dict[str, list[Example]]:
    out = {}
    for ci, cat in enumerate(EDIT_CATEGORIES):
        rng = np.random.default_rng((seed, _EDIT_TAG, ci))
        out[cat] = [sample_example(rng, cfg, "edit", raw_task=cat) for _ in range(n)]
    return out


def _batch_seed(seed: int, tag: int, b: int) -> int:
    return int(np.random.SeedSequence((seed, tag, b)).generate_state(1)[0])


def _generate(generator, examples: list[Example], sources: np.ndarray | None, seed: int, tag: int,
              batch_size: int, res: int, bar, gen_threads: int | None = None) -> np.ndarray:
    outs = []
    for b, i in enumerate(range(0, len(examples), batch_size)):
        chunk = examples[i: i + batch_size]
        src = None if sources is None else sources[i: i + batch_size]
        with torch_threads(gen_threads):  # the model runs with the caller's thread setting
            out = generator.generate(chunk, src, _batch_seed(seed, tag, b))
        try:
            out = check_images(out, n=len(chunk), res=res, what=f"model {generator.name!r} output")
        except ValueError as e:
            raise UserError(str(e)) from None
        outs.append(out)
        if bar is not None:
            bar.update(len(chunk))
    return np.concatenate(outs) if outs else np.zeros((0, res, res, 3), np.uint8)


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def _nanmean(x: np.ndarray, nd: int = 4) -> float | None:
    """Mean over the finite entries (None when there are none)."""
    x = x[np.isfinite(x)]
    return _r(x.mean(), nd) if len(x) else None


def evaluate(generator, suite: str = "all", n: int = DEFAULT_N, seed: int = 0, resolution: int = 32,
             batch_size: int = DEFAULT_BATCH, progress: bool = True, threads: int | None = 1) -> dict:
    """The scores dict for ``generator`` (see the module docstring). ``threads``: torch threads for the scoring
    networks (None = leave torch's setting; the generator always runs with the caller's setting)."""
    return evaluate_with_samples(generator, suite, n, seed, resolution, batch_size, progress, threads)[0]


def check_args(suite: str, n: int, resolution: int, batch_size: int = DEFAULT_BATCH) -> None:
    if suite not in SUITES:
        raise UserError(f"--suite {suite!r} unknown; expected one of {', '.join(SUITES)}")
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if resolution not in (32, 64):
        raise UserError(f"--resolution must be 32 or 64, got {resolution}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def evaluate_with_samples(generator, suite: str = "all", n: int = DEFAULT_N, seed: int = 0, resolution: int = 32,
                          batch_size: int = DEFAULT_BATCH, progress: bool = True,
                          threads: int | None = 1) -> tuple[dict, list[Sample]]:
    import torch

    check_args(suite, n, resolution, batch_size)
    gen_threads = torch.get_num_threads()
    with torch_threads(threads):
        return _evaluate(generator, suite, n, seed, resolution, batch_size, progress, gen_threads)


def _evaluate(generator, suite, n, seed, resolution, batch_size, progress, gen_threads):
    from tqdm import tqdm

    t_start = time.perf_counter()
    cfg = DEFAULT_WORLD.with_resolution(resolution)
    judge, clip = load_judge(), load_clip()
    judge.check_world(cfg)
    do_t2i, do_edit = suite in ("t2i", "all"), suite in ("edit", "all")
    n_prompts, ipp = t2i_plan(n)
    total = (len(T2I_CATEGORIES) * n_prompts * ipp if do_t2i else 0) + (len(EDIT_CATEGORIES) * n if do_edit else 0)
    samples: list[Sample] = []
    gen_s = 0.0
    scores: dict = {
        "model": generator.name, "suite": suite, "seed": seed, "resolution": resolution, "n": n,
        "batch_size": batch_size, "judge_version": judge.version, "clip_version": clip.version,
        "n_samples": {}, "geneval": None, "gedit": None, "fid": None, "clip_score": None, "lpips": None,
        "clip_score_by_bucket": None, "lpips_by_bucket": None, "preservation": None,
    }
    t2i_imgs = t2i_ref = prompts = edit_out = edit_tgt = None
    items: dict = {}   # per-item scores, in suite order (scores["items"]; for paired bootstraps)
    with tqdm(total=total, desc=f"eval {generator.name}", unit="img", disable=not progress, leave=False) as bar:
        if do_t2i:
            plan = t2i_prompts(seed, n_prompts, cfg)
            exs = [ex for cat in T2I_CATEGORIES for ex in plan[cat] for _ in range(ipp)]
            t0 = time.perf_counter()
            t2i_imgs = _generate(generator, exs, None, seed, _T2I_TAG, batch_size, resolution, bar, gen_threads)
            gen_s += time.perf_counter() - t0
            reading = judge.run(t2i_imgs)
            readable = judge.pq_from_quality(reading.quality) >= READABLE_PQ
            passed = np.array([bool(ok) and geneval_pass(ex.constraints, lay)
                               for ex, lay, ok in zip(exs, reading.layouts, readable)])
            cats = np.array([ex.raw_task for ex in exs])
            geneval = {c: _r(passed[cats == c].mean()) for c in T2I_CATEGORIES}
            geneval["overall"] = _r(np.mean([geneval[c] for c in T2I_CATEGORIES]))
            scores["geneval"] = geneval
            # per-prompt pass rates (the unit of the report's bootstrap: images of one prompt are not independent)
            items["geneval"] = {c: [_r(v, 4) for v in passed[cats == c].reshape(-1, ipp).mean(1)]
                                for c in T2I_CATEGORIES}
            # FID reference: a disjoint fresh render per generated image, satisfying the same prompt
            ref_rng = np.random.default_rng((seed, _REF_TAG))
            t2i_ref = np.stack([render(scene_for_constraints(ex.constraints, ref_rng, cfg), cfg, resolution)
                                for ex in exs])
            if len(exs) >= 2:
                scores["fid"] = _r(frechet_distance(judge.features(t2i_ref), reading.features), 4)
            prompts = [ex.prompt for ex in exs]
            cs = clip_score(clip.cosine(t2i_imgs, prompts))
            scores["clip_score"] = _r(cs.mean(), 4)
            scores["n_samples"].update({"t2i_prompts_per_category": n_prompts, "images_per_prompt": ipp,
                                        "t2i_images": len(exs), "fid_reference_images": len(exs)})
            for ex, img, ok, c in zip(exs, t2i_imgs, passed, cs):
                samples.append(Sample("t2i", ex.raw_task, ex.prompt, img, scores={"pass": bool(ok), "clip": c}))
        if do_edit:
            plan = edit_examples(seed, n, cfg)
            exs = [ex for cat in EDIT_CATEGORIES for ex in plan[cat]]
            sources = np.stack([render(ex.source, cfg, resolution) for ex in exs])
            edit_tgt = np.stack([render(ex.target, cfg, resolution) for ex in exs])
            t0 = time.perf_counter()
            edit_out = _generate(generator, exs, sources, seed, _EDIT_TAG, batch_size, resolution, bar, gen_threads)
            gen_s += time.perf_counter() - t0
            reading = judge.run(edit_out)
            pq = judge.pq_from_quality(reading.quality)
            per = []
            for ex, lay, p in zip(exs, reading.layouts, pq):
                sc = edit_scores(lay, ex.source.layout(), ex.target.layout())["sc"] if p >= READABLE_PQ else 0.0
                per.append({"sc": sc, "pq": float(p), "o": overall(sc, float(p))})
            gedit = {}
            for cat in EDIT_CATEGORIES:
                rows = [r for r, ex in zip(per, exs) if ex.raw_task == cat]
                gedit[cat] = {k: _r(np.mean([r[k] for r in rows]), 4) for k in ("sc", "pq", "o")}
            gedit["avg"] = {k: _r(np.mean([gedit[c][k] for c in EDIT_CATEGORIES]), 4) for k in ("sc", "pq", "o")}
            scores["gedit"] = gedit
            items["gedit_o"] = {c: [_r(r["o"], 4) for r, ex in zip(per, exs) if ex.raw_task == c]
                                for c in EDIT_CATEGORIES}
            lp = judge.lpips(edit_out, edit_tgt)
            scores["lpips"] = _r(lp.mean(), 5)
            # edit outputs vs a caption of their exact target scene (CLIP score of local / global edits)
            ecs = clip_score(clip.cosine(edit_out, [scene_caption(ex.target)[0] for ex in exs]))
            cats = np.array([ex.raw_task for ex in exs])
            buckets = {"local_edit": np.isin(cats, LOCAL_EDITS), "global_edit": np.isin(cats, GLOBAL_EDITS),
                       "edit": np.ones(len(exs), bool)}
            scores["clip_score_by_bucket"] = {b: _r(ecs[m].mean(), 4) for b, m in buckets.items() if m.any()}
            scores["lpips_by_bucket"] = {b: _r(lp[m].mean(), 5) for b, m in buckets.items() if m.any()}
            keep = preservation(edit_out, sources, edit_tgt)
            pres = {c: _nanmean(keep[cats == c]) for c in EDIT_CATEGORIES}
            pres.update({b: _nanmean(keep[m]) for b, m in buckets.items() if m.any()})
            scores["preservation"] = pres
            items["preservation"] = {c: [_r(k, 4) if np.isfinite(k) else None for k in keep[cats == c]]
                                     for c in EDIT_CATEGORIES}
            scores["n_samples"].update({"edit_examples_per_category": n, "edit_images": len(exs)})
            for ex, img, s, t, r, d in zip(exs, edit_out, sources, edit_tgt, per, lp):
                samples.append(Sample("edit", ex.raw_task, ex.prompt, img, s, t, scores={**r, "lpips": float(d)}))
            for smp, k in zip(samples[-len(exs):], keep):
                smp.scores["preservation"] = None if not np.isfinite(k) else float(k)
    scores["items"] = items
    scores["standard"] = standard_metrics(t2i_imgs, t2i_ref, prompts, edit_out, edit_tgt)
    total_s = time.perf_counter() - t_start
    scores["timings"] = {"generate_s": round(gen_s, 3), "score_s": round(total_s - gen_s, 3),
                         "total_s": round(total_s, 3), "images": total,
                         "generated_images_per_s": round(total / gen_s, 2) if gen_s > 0 else None}
    return scores, samples
