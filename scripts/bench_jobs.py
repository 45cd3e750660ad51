"""Throughput of cells run side by side on a small CPU: one process with all cores vs several with one each.

    python scripts/bench_jobs.py [--steps 6] [--jobs 2] [--methods danceopd,joint_sft]

The full preset is many independent cells. This measures, in ONE sitting and alternating the two layouts, the
DanceOPD (or any method's) optimizer steps per second of the whole machine: (1) one process with ``--jobs`` torch
threads (the row-parallel split of ``backends/rowsplit.py`` over them), (2) ``--jobs`` processes at once with one
thread each, each running the same steps as (1). It prints steps/s of both and the ratio (2) / (1), which is
what ``danceopd reproduce --jobs N`` on a CPU can gain over one cell at a time. Same model and batch as
``scripts/bench_distill.py`` (c).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _steps(method: str, threads: int, n: int, start=None) -> float:
    """Seconds for ``n`` optimizer steps (after one warm-up step) of ``method`` with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from bench_distill import METHODS, Bench, RouteSampler

    a = argparse.Namespace(batch=32, rollout_steps=8, k=1, bias="low_t")
    bench = Bench(a)
    m = METHODS[method]()
    sampler = RouteSampler(bench.routes, seed=0, mode="group" if m.group_routes else "hard")

    def one(it):
        picked = sampler.sample_routes()
        batches = {r.name: bench.batch(r.bucket) for r in picked}
        torch.manual_seed(3000 + it)
        bench.step(m, picked, batches)

    one(0)
    if start is not None:
        start.wait()   # every process starts timing together
    t0 = time.perf_counter()
    for it in range(1, n + 1):
        one(it)
    return time.perf_counter() - t0


def _worker(args):
    method, n, start = args
    return _steps(method, 1, n, start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per process and layout")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two layouts")
    ap.add_argument("--methods", default="danceopd")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    for method in a.methods.split(","):
        one_proc, side = [], []
        for _ in range(a.rounds):
            p = ctx.Pool(1)
            one_proc.append(a.steps / p.apply(_steps, (method, a.jobs, a.steps)))
            p.close()
            with ctx.Manager() as mgr:
                start = mgr.Barrier(a.jobs)
                with ctx.Pool(a.jobs) as pool:
                    secs = pool.map(_worker, [(method, a.steps, start)] * a.jobs)
            side.append(a.jobs * a.steps / max(secs))
        s1, s2 = statistics.median(one_proc), statistics.median(side)
        print(f"{method}: one process x {a.jobs} threads {s1:.3f} steps/s | {a.jobs} processes x 1 thread "
              f"{s2:.3f} steps/s in all | ratio {s2 / s1:.2f}x   (rounds: {[round(x, 3) for x in one_proc]} vs "
              f"{[round(x, 3) for x in side]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
