"""The comparison's statistics: overall quality from per-item scores, and a paired bootstrap over seeds and
evaluation items for the difference between two methods (docs/reproduce.md, "Confidence intervals").

Cells of seed ``s`` are evaluated on evaluation seed ``s``: two methods' seed-``s`` cells are scored on the same
prompts and edits, so items are paired. One bootstrap replicate draws seeds with replacement from the seeds both
methods have, and for each drawn seed draws items with replacement within every category (the same draw for both
methods); each method's overall quality is recomputed from the drawn items and averaged over the drawn seeds. The
95% interval is the 2.5-97.5 percentile range of the replicated differences.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000


def overall_from_items(items: dict, setting: str, pick: dict[str, np.ndarray] | None = None) -> float:
    """Overall quality (see ``plateau.overall_quality``) from per-item scores, optionally on resampled item indices
    ``pick[category]``. Setting A: (10 x mean over T2I categories of the mean per-prompt pass rate + mean over edit
    categories of the mean O) / 2; setting B: the edit part alone."""
    def cat_means(block):
        return [float(np.mean(np.asarray(v, float)[pick[c]] if pick else v)) for c, v in block.items()]

    o = float(np.mean(cat_means(items["gedit_o"])))
    if setting == "A":
        return (10 * float(np.mean(cat_means(items["geneval"]))) + o) / 2
    return o


def _blocks(setting: str) -> tuple[str, ...]:
    return ("geneval", "gedit_o") if setting == "A" else ("gedit_o",)


def _resampled_diffs(a: dict, b: dict, setting: str, k: int, rng, seed) -> np.ndarray:
    """``k`` item-resampled values of overall(a) - overall(b) (the same item draw for both), shape [k]."""
    parts = {}
    for block in _blocks(setting):
        per_cat = []
        for c, va in a[block].items():
            va, vb = np.asarray(va, float), np.asarray(b[block][c], float)
            if len(va) != len(vb):
                raise ValueError(f"seed {seed}, {block}/{c}: {len(va)} vs {len(vb)} items: the two methods were "
                                 "not scored on the same items")
            idx = rng.integers(0, len(va), size=(k, len(va)))
            per_cat.append(va[idx].mean(1) - vb[idx].mean(1))
        parts[block] = np.mean(per_cat, axis=0)
    if setting == "A":
        return (10 * parts["geneval"] + parts["gedit_o"]) / 2
    return parts["gedit_o"]


def paired_bootstrap(a: dict[int, dict], b: dict[int, dict], setting: str, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict:
    """Difference ``a - b`` of mean overall quality with a 95% paired bootstrap interval.

    Args:
        a, b: ``{seed: items}`` (a record's ``scores["items"]``) of the two methods.
    Returns:
        ``{"diff", "lo", "hi", "seeds", "verdict"}``; verdict is "win" / "loss" when the interval excludes 0 (for
        ``a``), else "tie". None values when the two share no seed with items.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"diff": None, "lo": None, "hi": None, "seeds": [], "verdict": None}
    diff = float(np.mean([overall_from_items(a[s], setting) - overall_from_items(b[s], setting) for s in seeds]))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))   # seeds drawn per replicate
    diffs = np.zeros(draws.shape)
    for j, s in enumerate(seeds):   # every (replicate, slot) that drew seed s gets its own item resample
        mask = draws == j
        diffs[mask] = _resampled_diffs(a[s], b[s], setting, int(mask.sum()), rng, s)
    reps = diffs.mean(1)
    lo, hi = (float(x) for x in np.percentile(reps, [2.5, 97.5]))
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return {"diff": diff, "lo": lo, "hi": hi, "seeds": seeds, "verdict": verdict}
