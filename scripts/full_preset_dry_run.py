"""Developers' smoke test of the full preset: every stage at toy size, with real training and real evaluation.

    OMP_NUM_THREADS=1 python scripts/full_preset_dry_run.py --out /tmp/dry      # ~15-30 min on 2 cores

It runs `danceopd reproduce --preset full` with each cell shrunk (<= 3 training steps of batch 2, rollouts of 2
steps, 2 items per category; curves scored at steps 1 and 2, longer curves at step 3) and a plateau tolerance of
-1, so every curve counts as still rising: the grid, the points past its edge (stage 1b), the curves, the longer
curves (stage 2b, continuing the curve cells' checkpoints), the seeds at the budget (step 3), weight merging, the
dense baselines and the ablations all run, then the report. It checks the plumbing between stages, not numbers.
Nothing under results/ is touched (the publish folder is under --out).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from danceopd.report import plan, plateau, runner


def shrink(cells):
    """Toy-size copies of the planned cells (ids unchanged, so the stages find them)."""
    for c in cells:
        if c.kind == "distill":
            cap = 2 if c.curve and not c.resume_from else 3   # curve cells end at 2, everything else at <= 3
            ov = []
            for o in c.overrides:
                m = re.match(r"train\.steps=(\d+)", o)
                ov.append(f"train.steps={max(1, min(int(m.group(1)), cap))}" if m else o)
            if not any(o.startswith("train.steps=") for o in ov):
                ov.append(f"train.steps={cap}")
            ov += ["train.batch_size=2", "rollout.steps=2", "train.checkpoint_every=1", "train.threads=1",
                   "train.log_every=1"]
            if c.tags.get("method") == "flowopd":
                ov.append("flowopd.group_size=2")
            c.overrides = ov
            c.curve = [3] if c.resume_from else [1, 2] if c.curve else []
        c.eval_n = 2
        if c.curve_n:
            c.curve_n = 2
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and the published copy")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    plan.CONVERGE_STEPS, plan.CONVERGE_CURVE, plan.EXTEND_STEPS = 2, (1, 2), 3
    plateau.PLATEAU_TOL = -1.0            # every curve "still rising": stage 2b runs
    real = runner.run_plan
    runner.run_plan = lambda cells, *args, **kw: real(shrink(cells), *args, **kw)
    from danceopd.cli import main as cli

    t0 = time.time()
    rc = cli(["reproduce", "--preset", "full", "--out", str(a.out / "runs"), "--seed", str(a.seed),
              "--publish", str(a.out / "published")])
    recs = {p.name for p in (a.out / "runs" / "cells").iterdir()}
    stages = {"grid": "grid-lr", "edge": "value-5e-05", "extend": "extend-", "seeds": "__s1--",
              "dense": "flowopd__s0--", "ablations": "ablation-"}
    missing = [s for s, pat in stages.items() if not any(pat in r for r in recs)]
    print(f"dry run: exit {rc}, {len(recs)} cells in {(time.time() - t0) / 60:.1f} min; "
          + (f"stages missing: {missing}" if missing else "every stage ran"))
    return 1 if rc or missing else 0


if __name__ == "__main__":
    sys.exit(main())
