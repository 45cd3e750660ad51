"""The budget rule of the full preset's comparison (docs/reproduce.md, "Presets"): reading the seed-0 learning
curves. A curve has plateaued at step s when no later point is more than PLATEAU_TOL above it (overall quality,
0-10). Fixed before any curve was measured; docs/reproduce.md compares it with the measured item noise of the
validation score. The budget of a setting is ONE matched budget past every main method's plateau: the first curve
point at or after the latest plateau (the curves' last shared point when one is still rising at its end). Training runs at a
constant learning rate after warmup and resumes exactly, so the seed-0 curve cell's student at step B is the student
a B-step run trains: its test-seed score at B (``curve_test``) is seed 0's result.
"""

from __future__ import annotations

# the methods compared at convergence: each has a seed-0 learning curve per setting
MAIN_METHODS = ("danceopd", "joint_sft", "offpolicy", "soft_mix")
PLATEAU_TOL = 0.2


def overall_quality(scores: dict, setting: str) -> float:
    """One 0-10 number per model: setting A = mean of 10 x GenEval overall and GEdit average O; setting B = GEdit
    average O. Used to rank baselines and as the comparison table's overall column."""
    o = (scores.get("gedit") or {}).get("avg", {}).get("o")
    g = (scores.get("geneval") or {}).get("overall")
    if setting == "A" and g is not None and o is not None:
        return (10 * g + o) / 2
    return o if o is not None else float("nan")


def plateau_step(points: list[tuple[int, float]]) -> int | None:
    """First step after which the curve never rises more than PLATEAU_TOL; None if it is still rising at its last
    point (the last point beats every earlier one by more than PLATEAU_TOL)."""
    pts = sorted(points)
    if len(pts) < 2:
        return None
    if pts[-1][1] - max(v for _, v in pts[:-1]) > PLATEAU_TOL:
        return None
    for i, (s, v) in enumerate(pts):
        if max(w for _, w in pts[i:]) - v <= PLATEAU_TOL:
            return s
    return None


def curve_points(rec: dict, setting: str, key: str = "scores") -> list[tuple[int, float]]:
    """(step, overall quality) of a curve record; ``key`` "scores" = VAL_SEED, "test" = the cell's test seed."""
    return sorted((p["step"], overall_quality(p[key], setting)) for p in rec.get("curve") or [] if key in p)


def longest_curves(recs: dict[str, dict]) -> dict[str, dict]:
    """{id: record}: per (setting, main method), the finished seed-0 curve record that reaches furthest (a curve
    extension over the curve cell it continues)."""
    best: dict[tuple, dict] = {}
    for r in recs.values():
        t = r.get("tags", {})
        if (r.get("status") != "done" or not r.get("curve") or t.get("method") not in MAIN_METHODS
                or "grid" in t or "ablation" in t or t.get("seed", 0) != 0):
            continue
        k, end = (t.get("setting"), t["method"]), max(p["step"] for p in r["curve"])
        if k not in best or end > max(p["step"] for p in best[k]["curve"]):
            best[k] = r
    return {r["id"]: r for r in best.values()}


def plateaus(seed0: dict[str, dict], setting: str) -> dict[str, int | None]:
    """{main method: plateau step of its seed-0 validation curve (None = still rising)} in ``setting``."""
    return {r["tags"]["method"]: plateau_step(curve_points(r, setting)) for r in longest_curves(seed0).values()
            if r["tags"].get("setting") == setting}


def budget(seed0: dict[str, dict], setting: str) -> int:
    """The comparison budget of ``setting`` (steps, 32 training samples each) from the seed-0 curves: the first
    step all four curves measured at or after the latest plateau; their last shared step when one still rises."""
    curves = [r for r in longest_curves(seed0).values() if r["tags"].get("setting") == setting]
    if not curves:
        raise ValueError(f"no finished seed-0 curve in setting {setting}: the budget is read off the curves")
    shared = sorted(set.intersection(*({s for s, _ in curve_points(r, setting)} for r in curves)))
    ps = [plateau_step(curve_points(r, setting)) for r in curves]
    if any(p is None for p in ps):
        return shared[-1]
    return min((s for s in shared if s >= max(ps)), default=shared[-1])


def val_at(rec: dict, setting: str, step: int) -> float:
    """Validation overall quality of a curve record at ``step``."""
    return dict(curve_points(rec, setting)).get(step, float("nan"))


def strongest_baseline(seed0: dict[str, dict], setting: str, b: int) -> str | None:
    """The strongest baseline of ``setting``: the main method other than DanceOPD with the best seed-0 VALIDATION
    quality at the budget ``b`` (a tie goes to the later name). Chosen before any test result is seen; it gets
    SEEDS_BEST seeds and is the baseline of the report's headline difference."""
    ranked = sorted(((val_at(r, setting, b), r["tags"]["method"]) for r in longest_curves(seed0).values()
                     if r["tags"].get("setting") == setting and r["tags"].get("method") != "danceopd"), reverse=True)
    return ranked[0][1] if ranked else None
