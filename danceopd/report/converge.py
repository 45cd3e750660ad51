"""The report's converged comparison: what each method sees per step, the learning-rate x guidance grid, the
learning curves with their plateaus (the budget rule), and per setting the main methods at the budget with the
DanceOPD - best-baseline difference and its 95% paired-bootstrap interval (``stats``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plan import (
    CONVERGE_STEPS,
    EDGE_FACTOR,
    EXTEND_STEPS,
    LR_GRID,
    SCALE_GRID,
    SEEDS_BEST,
    SEEDS_OTHER,
    VAL_SEED,
    choose_hparams,
)
from .plateau import (
    MAIN_METHODS,
    PLATEAU_TOL,
    budget,
    curve_points,
    longest_curves,
    overall_quality,
    plateau_step,
    strongest_baseline,
)
from .plateau import plateaus as curve_plateaus
from .stats import paired_bootstrap

__all__ = ["at_budget", "convergence_section", "pairs_table", "plateau_step", "verdict"]

PAPER_GAIN = {"A": 8.1, "B": 16.1}   # DanceOPD vs the best baseline in the paper, % of overall quality
SEES = {   # per optimizer step, every main method: both routes, 16 samples each (configs/world/setting_*.yaml)
    "danceopd": "32 samples (2 routes x 16); per sample 1 student rollout (<= 8 Euler steps, no grad), "
                "1 routed-teacher query (CFG: 2 forwards), 1 student forward + backward",
    "joint_sft": "32 samples (2 routes x 16); per sample 1 noised data state, 1 student forward + backward "
                 "(no teacher)",
    "offpolicy": "32 samples (2 routes x 16); per sample 1 noised data state, 1 routed-teacher query, 1 student "
                 "forward + backward",
    "soft_mix": "32 samples (2 routes x 16); per sample 1 student rollout, a query of EVERY teacher (weighted "
                "mean), 1 student forward + backward",
}


def _is_main(r, setting, method) -> bool:
    t = r.get("tags", {})
    return (r.get("status") == "done" and t.get("setting") == setting and t.get("method") == method
            and "grid" not in t and "ablation" not in t)


def _curve_rec(recs, setting, method) -> dict | None:
    """The finished seed-0 curve of (setting, method) that reaches furthest (an extension over its curve cell)."""
    return next((r for r in longest_curves(recs).values()
                 if r["tags"].get("setting") == setting and r["tags"].get("method") == method), None)


def _seed0(recs, setting) -> dict[str, dict] | None:
    """{id: curve record} of every main method of ``setting`` once all have finished (None before)."""
    got = {m: _curve_rec(recs, setting, m) for m in MAIN_METHODS}
    return None if any(r is None for r in got.values()) else {r["id"]: r for r in got.values()}


def _main(recs, setting, method, b) -> dict[int, dict]:
    """Results of (setting, method) at the budget ``b``, by seed: seed 0 from its curve cell's test-seed score at
    step b, the other seeds from their b-step cells."""
    out = {}
    for r in recs.values():
        if not _is_main(r, setting, method):
            continue
        seed = r["tags"].get("seed", 0)
        if r.get("curve"):   # a curve cell and its extension share their points up to the cell's end
            pt = next((p for p in r["curve"] if p["step"] == b and "test" in p), None)
            if pt is not None and (seed not in out or len(r["curve"]) > len(out[seed]["curve"])):
                out[seed] = {**r, "scores": pt["test"], "steps": b}
        elif r.get("steps") == b:
            out[seed] = r
    return out


def sees_table() -> str:
    rows = [f"| {m} | {SEES[m]} |" for m in MAIN_METHODS]
    return "\n".join(["| method | what one optimizer step trains on |", "|---|---|", *rows])


def grid_table(recs, setting) -> str | None:
    cells = {}
    for r in recs.values():
        t = r.get("tags", {})
        if t.get("grid") == "lr" and t.get("setting") == setting and r.get("status") == "done":
            cells[(t["method"], float(t["value"]))] = r.get("by_scale") or {}
    if not cells:
        return None
    lrs = sorted({lr for _, lr in cells} | set(LR_GRID))   # with the edge points of stage 1b
    head = [f"lr {lr:g}, scale {x:g}" for lr in lrs for x in SCALE_GRID]
    rows, edge = [], []
    for m in MAIN_METHODS:
        try:
            chosen = choose_hparams({str(i): {"tags": {"grid": "lr", "setting": setting, "method": m,
                                                       "value": f"{lr:g}"}, "by_scale": bs}
                                     for i, ((mm, lr), bs) in enumerate(cells.items()) if mm == m}, setting, m)
        except KeyError:
            chosen = None
        vals = []
        for lr in lrs:
            for x in SCALE_GRID:
                sc = cells.get((m, lr), {}).get(f"{x:g}")
                v = "—" if sc is None else f"{overall_quality(sc, setting):.2f}"
                vals.append(f"**{v}**" if chosen == (lr, x) else v)
        rows.append(f"| {m} | " + " | ".join(vals) + " |")
        tried = sorted(lr for mm, lr in cells if mm == m)
        if chosen and set(LR_GRID) <= set(tried) and chosen[0] in (tried[0], tried[-1]):
            edge.append(f"{m} (lr {chosen[0]:g})")
    md = "\n".join(["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head), *rows])
    md += (f"\n\nThe grid ({', '.join(f'{x:g}' for x in LR_GRID)}) is the same for every method and was fixed before "
           f"any run; a method whose best learning rate is at its edge gets one more point {EDGE_FACTOR}x past it "
           "(stage 1b).")
    if edge:   # said, not hidden
        md += (f" Still chosen at the edge of what was tried: {', '.join(edge)}; a learning rate beyond it was "
               "not tried, so these methods may be under-tuned.")
    return md


def at_budget(recs, setting, method) -> dict[int, dict] | None:
    """``_main`` at ``setting``'s budget for a main method once its four seed-0 curves have finished, else None
    (quick runs, unfinished full runs: the report then shows the cells as they are)."""
    seed0 = _seed0(recs, setting) if method in MAIN_METHODS else None
    return _main(recs, setting, method, budget(seed0, setting)) if seed0 else None


def curves(recs, figdir: Path) -> tuple[str | None, dict]:
    """Overall quality on the validation seed vs training step, seed 0 of each main method; returns (markdown
    with the figure and the plateau table, {(setting, method): plateau step or None})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plateaus, lines = {}, []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    any_curve = False
    for ax, setting in zip(axes, ("A", "B")):
        for m in MAIN_METHODS:
            r = _curve_rec(recs, setting, m)
            if not r:
                continue
            pts = curve_points(r, setting)
            any_curve = True
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", label=m)
            plateaus[(setting, m)] = plateau_step(pts)
            lines.append(f"| {setting} | {m} | " + ", ".join(f"{s}: {v:.2f}" for s, v in pts) + " | "
                         + (str(plateaus[(setting, m)]) if plateaus[(setting, m)] else "still rising") + " |")
        seed0 = _seed0(recs, setting)
        if seed0:
            ax.axvline(budget(seed0, setting), color="grey", ls="--", lw=0.8)
        ax.set_title(f"setting {setting} (validation seed {VAL_SEED}; dashed: budget)", fontsize=9)
        ax.set_xlabel("optimizer step (32 samples each)")
        ax.set_ylabel("overall quality (0-10)")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished curve yet", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
    if not any_curve:
        plt.close(fig)
        return None, plateaus
    fig.tight_layout()
    figdir.mkdir(parents=True, exist_ok=True)
    fig.savefig(figdir / "converge_curves.png", dpi=110)
    plt.close(fig)
    md = ["![learning curves](figures/converge_curves.png)", "",
          "| setting | method | overall quality by step | plateau step |", "|---|---|---|---|", *lines]
    for setting in ("A", "B"):
        seed0 = _seed0(recs, setting)
        if seed0:
            b = budget(seed0, setting)
            rising = [m for (s, m), p in plateaus.items() if s == setting and p is None]
            done = b >= EXTEND_STEPS
            why = (f"still rising at {b}: {', '.join(rising)} (the budget is the last step every curve reached; "
                   f"curves still rising at {CONVERGE_STEPS} "
                   + (f"were continued to {EXTEND_STEPS})" if done else
                      f"are being continued to {EXTEND_STEPS}: provisional until they finish)")
                   if rising else "the first curve point at or after every plateau")
            md.append(f"\nSetting {setting}: budget **{b} steps** ({why}).")
    return "\n".join(md), plateaus


def _fmt(vals, d=2):
    vals = [v for v in vals if v is not None and v == v]
    if not vals:
        return "—"
    return f"{vals[0]:.{d}f}" if len(vals) == 1 else f"{np.mean(vals):.{d}f} ± {np.std(vals, ddof=1):.{d}f}"


def device_mark(recs) -> str:
    """`` (GPU)`` / `` (GPU and CPU)`` after a seconds-per-step figure measured (partly) on a GPU: those are not
    comparable with the 2-core CPU figures beside them."""
    devices = " ".join(r.get("device", "cpu") for r in recs)   # e.g. "cuda (NVIDIA H200), then cpu"
    return "" if "cuda" not in devices else " (GPU and CPU)" if "cpu" in devices else " (GPU)"


def results(recs, setting, b) -> str | None:
    """Main methods at the budget ``b`` (mean ± std over seeds) and DanceOPD - best baseline with its 95%
    interval."""
    rows, means = [], {}
    for m in MAIN_METHODS:
        by_seed = _main(recs, setting, m, b)
        if not by_seed:
            continue
        scs = [r["scores"] for r in by_seed.values()]
        ov = [overall_quality(s, setting) for s in scs]
        means[m] = float(np.mean(ov))
        pres = [(s.get("preservation") or {}) for s in scs]
        rows.append(f"| {m} | {len(scs)} | {_fmt(ov)} | {_fmt([(s.get('gedit') or {}).get('avg', {}).get('o') for s in scs])} | "
                    f"{_fmt([(s.get('geneval') or {}).get('overall') for s in scs])} | "
                    f"{_fmt([p.get('local_edit') for p in pres])} | {_fmt([p.get('global_edit') for p in pres])} | "
                    f"{_fmt([r.get('sec_per_step') for r in by_seed.values()])}{device_mark(by_seed.values())} |")
    if not rows:
        return None
    md = ["| method | seeds | overall ↑ | GEdit O ↑ | GenEval ↑ | preservation local ↑ | preservation global ↑ | "
          "s / step |", "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]
    v = verdict(recs, setting, b)
    if v is not None and v["diff"] is None:
        md.append(f"\nDanceOPD − {v['best']}: {v['mean_diff']:+.2f} ({v['gain']:+.1f}%; paper "
                  f"{PAPER_GAIN[setting]:+.1f}%); no interval (no per-item scores on shared seeds).")
    elif v is not None:
        if v["provisional"]:
            md.append("\n**Provisional, not the protocol's verdict yet**: " + "; ".join(v["provisional"]) + ".")
        md.append(f"\n**DanceOPD − best baseline ({v['best']}): {v['diff']:+.2f} overall, 95% CI "
                  f"[{v['lo']:+.2f}, {v['hi']:+.2f}] over seeds {v['seeds']} and evaluation items → "
                  f"{v['verdict'].upper()}{' so far' if v['provisional'] else ''}** (relative {v['gain']:+.1f}%; the paper reports "
                  f"{PAPER_GAIN[setting]:+.1f}% in setting {setting}). The best baseline is the strongest one on "
                  "validation at the budget, chosen before its extra seeds ran; against every main baseline:")
        md.append("\n" + pairs_table(v))
    return "\n".join(md)


def verdict(recs, setting, b=None) -> dict | None:
    """DanceOPD against the strongest baseline at the budget (``b``; default: the setting's budget once its curves
    are in). The strongest baseline is the one chosen on validation before the seeds ran
    (``plateau.strongest_baseline``); without curves, the baseline with the best mean. Returns ``paired_bootstrap``'s
    fields plus best, means, mean_diff, gain (%), budget, and ``pairs``: {baseline: paired_bootstrap of DanceOPD
    against it} for EVERY main baseline, so a baseline that does better on the test seeds is not hidden. None
    before DanceOPD and a baseline have results there."""
    seed0 = _seed0(recs, setting)
    if b is None:
        if not seed0:
            return None
        b = budget(seed0, setting)
    runs = {m: rs for m in MAIN_METHODS if (rs := _main(recs, setting, m, b))}
    means = {m: float(np.mean([overall_quality(r["scores"], setting) for r in rs.values()])) for m, rs in runs.items()}
    base = [m for m in means if m != "danceopd"]
    if "danceopd" not in means or not base:
        return None
    best = strongest_baseline(seed0, setting, b) if seed0 else None
    if best not in base:
        best = max(base, key=lambda m: means[m])

    def items(m):
        return {s: r["scores"]["items"] for s, r in runs[m].items() if (r["scores"].get("items") or {}).get("gedit_o")}

    pairs = {m: paired_bootstrap(items("danceopd"), items(m), setting) for m in base}
    gain = (means["danceopd"] - means[best]) / max(abs(means[best]), 1e-9) * 100
    return {**pairs[best], "best": best, "means": means, "mean_diff": means["danceopd"] - means[best], "gain": gain,
            "budget": b, "pairs": pairs, "provisional": provisional(seed0, setting, runs, best)}


def provisional(seed0, setting, runs: dict[str, dict], best: str) -> list[str]:
    """Why a setting's comparison is not the protocol's final one yet ([] when it is): a seed-0 curve still rising
    whose continuation to EXTEND_STEPS has not finished (the budget may move), or fewer seeds than the protocol
    runs (SEEDS_BEST for DanceOPD and the strongest baseline, SEEDS_OTHER for the others)."""
    why = []
    if seed0:
        ends = {r["tags"]["method"]: max(p["step"] for p in r["curve"])
                for r in longest_curves(seed0).values() if r["tags"].get("setting") == setting}
        rising = [m for m, st in curve_plateaus(seed0, setting).items() if st is None and ends.get(m, 0) < EXTEND_STEPS]
        if rising:
            why.append(f"{', '.join(rising)} still rising at {max(ends.values())} steps: the curves continue to "
                       f"{EXTEND_STEPS} and the budget may move")
    short = [f"{m} {len(rs)} of {n}" for m, rs in runs.items()
             if len(rs) < (n := SEEDS_BEST if m in ("danceopd", best) else SEEDS_OTHER)]
    if short:
        why.append("seeds so far: " + ", ".join(short))
    return why


def pairs_table(v: dict) -> str:
    """DanceOPD against every main baseline at the budget: test means, paired difference, interval, verdict."""
    rows = ["| DanceOPD − | baseline mean | paired seeds | difference | 95% CI | verdict |",
            "|---|---:|---|---:|---|---|"]
    for m, p in sorted(v["pairs"].items(), key=lambda kv: -v["means"][kv[0]]):
        name = f"{m} (strongest on validation)" if m == v["best"] else m
        if p["diff"] is None:
            rows.append(f"| {name} | {v['means'][m]:.2f} | — | — | — | no per-item scores on shared seeds |")
            continue
        rows.append(f"| {name} | {v['means'][m]:.2f} | {p['seeds']} | {p['diff']:+.2f} | "
                    f"[{p['lo']:+.2f}, {p['hi']:+.2f}] | {p['verdict']} |")
    return "\n".join(rows)


def convergence_section(recs, figdir: Path) -> str | None:
    """The whole section (None when no grid, curve or converged cell has finished)."""
    parts = []
    for s in ("A", "B"):
        g = grid_table(recs, s)
        if g:
            parts += [f"### Setting {s}: learning rate x sampling guidance (validation seed {VAL_SEED}, "
                      "overall quality; bold = chosen)", g]
    cur, _ = curves(recs, figdir)
    if cur:
        parts += [f"### Learning curves (budget rule: one matched budget at or past every main method's plateau; "
                  f"plateau = no later point more than {PLATEAU_TOL} above)", cur]
    for s in ("A", "B"):
        seed0 = _seed0(recs, s)
        b = budget(seed0, s) if seed0 else None
        r = results(recs, s, b) if b else None
        if r:
            parts += [f"### Setting {s} at the budget: {b} steps ({b * 32:,} training samples per method; seed 0 "
                      "from its curve cell at that step, scored on its test seed)", r]
    if not parts:
        return None
    return "\n\n".join(["### What each method sees per step", sees_table(), *parts])
