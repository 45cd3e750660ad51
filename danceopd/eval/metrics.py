"""Metric formulas (documented in docs/evaluation.md): GenEval-style prompt checks, GEdit-style SC / PQ / O, the
Frechet distance and the CLIP score."""

from __future__ import annotations

import math

import numpy as np

from ..world.prompts import check_constraints


def layout_elements(layout: tuple) -> list:
    """A layout as its 2 + n_slots elements: [background, style, slot_0, ..., slot_{n-1}]."""
    bg, style, slots = layout
    return [bg, style, *slots]


def geneval_pass(constraints: dict, layout: tuple) -> bool:
    return bool(check_constraints(constraints, layout))


def edit_scores(read: tuple, source: tuple, target: tuple) -> dict[str, float]:
    """GEdit-style semantic consistency of one edit, from the judge's reading of the output.

    Elements = background, style and every grid slot (empty or (shape, color)). Edited elements E are those where
    the exact target differs from the source; untouched elements U are the rest.
    success = 10 * (fraction of E read as in the target)   (10 when E is empty)
    keep    = 10 * (fraction of U read as in the source)   (no over-editing)
    SC      = min(success, keep)
    """
    r, s, t = layout_elements(read), layout_elements(source), layout_elements(target)
    edited = [i for i in range(len(t)) if s[i] != t[i]]
    kept = [i for i in range(len(t)) if s[i] == t[i]]
    success = 10.0 * (np.mean([r[i] == t[i] for i in edited]) if edited else 1.0)
    keep = 10.0 * (np.mean([r[i] == s[i] for i in kept]) if kept else 1.0)
    return {"success": float(success), "keep": float(keep), "sc": float(min(success, keep))}


def overall(sc: float, pq: float) -> float:
    """O = sqrt(SC * PQ) (0-10), per sample."""
    return math.sqrt(max(sc, 0.0) * max(pq, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (unbiased covariances):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)
    return max(d, 0.0)


def clip_score(cos: np.ndarray) -> np.ndarray:
    """CLIP score = 100 * max(cos(image, text), 0)."""
    return 100.0 * np.clip(np.asarray(cos, np.float64), 0.0, None)


PRESERVE_TOL = 16  # uint8 levels (6% of the range): "unchanged" = every channel within this of the source


def preservation(output: np.ndarray, source: np.ndarray, target: np.ndarray, tol: int = PRESERVE_TOL) -> np.ndarray:
    """Pixel preservation of edits: per image, the share of the pixels that the exact target leaves unchanged
    (bitwise equal to the source: the renderer keeps untouched content exact) which the output also leaves unchanged
    (every channel within ``tol`` uint8 levels of the source). uint8 [N, H, W, 3] each -> float [N] in [0, 1]; NaN
    for an image whose target changes every pixel. GEdit's O reads layouts, so an output that redraws the untouched
    scene plausibly but not exactly keeps its O; this score does not."""
    out, src, tgt = (np.asarray(a, np.int16) for a in (output, source, target))
    keep = (tgt == src).all(-1)                                       # [N, H, W] pixels the edit must not touch
    kept = (np.abs(out - src) <= tol).all(-1) & keep
    n_keep = keep.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_keep > 0, kept.sum((1, 2)) / n_keep, np.nan)
