"""Benchmark the evaluation suite: judged images/s (parser read twice + critic) and the wall time of one default
evaluation (both suites) of the ``oracle`` generator. ``--calibration`` also prints the calibration table (every
calibration generator x every metric at the same n and seed).

    python scripts/bench_eval.py [--images 2000] [--threads 1] [--n 100] [--calibration]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from danceopd.eval.generators import resolve_generator
from danceopd.eval.judge import load_judge
from danceopd.eval.suite import DEFAULT_N, evaluate
from danceopd.world import DEFAULT_WORLD, render
from danceopd.world.sampler import sample_example


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000, help="images to judge for the throughput number")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the judge (0 = torch's default)")
    ap.add_argument("--n", type=int, default=DEFAULT_N, help="images per category of the oracle evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", action="store_true", help="also print the calibration table")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    judge = load_judge()
    rng = np.random.default_rng(a.seed)
    imgs = np.stack([render(sample_example(rng, DEFAULT_WORLD, "edit").target, DEFAULT_WORLD)
                     for _ in range(a.images)])
    judge.run(imgs[:64])  # warm-up
    t0 = time.perf_counter()
    judge.run(imgs)
    dt = time.perf_counter() - t0
    print(f"judge: {a.images / dt:,.0f} images/s ({a.images} images, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    s = evaluate(resolve_generator("oracle", 32), "all", n=a.n, seed=a.seed, progress=False, threads=a.threads or None)
    wall = time.perf_counter() - t0
    ns = s["n_samples"]
    print(f"oracle evaluation (suite all, n={a.n}: {ns['t2i_images']} T2I + {ns['edit_images']} edit images, "
          f"{ns['fid_reference_images']} FID references): {wall:.1f}s wall "
          f"(generation {s['timings']['generate_s']:.1f}s, scoring {s['timings']['score_s']:.1f}s)")
    print(f"GEdit O avg {s['gedit']['avg']['o']:.2f}, GenEval overall {s['geneval']['overall']:.3f}, "
          f"FID {s['fid']:.2f}, CLIP score {s['clip_score']:.1f}, LPIPS {s['lpips']:.4f}")
    gen_budget = s["timings"]["images"] / 15.0
    print(f"a model at 15 images/s would need ~{gen_budget + s['timings']['score_s']:.0f}s for the same evaluation")
    if a.calibration:
        calibration_table(a.n, a.seed, a.threads or None)


def calibration_table(n: int, seed: int, threads):
    from danceopd.world import EDIT_CATEGORIES, T2I_CATEGORIES

    specs = ("oracle", "identity", "noise", "degrade:1", "degrade:2", "degrade:3", "degrade:4")
    runs = {sp: evaluate(resolve_generator(sp, 32), "all", n=n, seed=seed, progress=False, threads=threads)
            for sp in specs}
    print(f"\ncalibration (suite all, n={n}, seed={seed}); GEdit cells are SC/PQ/O")
    head = ["metric", *specs]
    rows = []
    for c in EDIT_CATEGORIES:
        rows.append([f"gedit {c}"] + [f"{r['gedit'][c]['sc']:.2f}/{r['gedit'][c]['pq']:.2f}/{r['gedit'][c]['o']:.2f}"
                                      for r in runs.values()])
    rows.append(["gedit avg"] + [f"{r['gedit']['avg']['sc']:.2f}/{r['gedit']['avg']['pq']:.2f}/"
                                 f"{r['gedit']['avg']['o']:.2f}" for r in runs.values()])
    for c in [*T2I_CATEGORIES, "overall"]:
        rows.append([f"geneval {c}"] + [f"{r['geneval'][c]:.3f}" for r in runs.values()])
    for k, fmt in (("fid", "{:.2f}"), ("clip_score", "{:.1f}"), ("lpips", "{:.4f}")):
        rows.append([k] + [fmt.format(r[k]) for r in runs.values()])
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main()
