"""Benchmark the streaming world sampler: scenes/s rendered straight to in-memory arrays (one core).

    python scripts/bench_world.py [--n 4000] [--resolution 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from danceopd.world import DEFAULT_WORLD, WorldStream


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = DEFAULT_WORLD.with_resolution(a.resolution)
    print(f"{'bucket':<12} {'scenes/s':>10} {'images/s':>10}")
    for bucket in ("t2i", "local_edit", "global_edit", "edit"):
        s = WorldStream(cfg, bucket, a.seed)
        s.batch(a.batch)  # warm-up
        t0, n, imgs = time.perf_counter(), 0, 0
        while n < a.n:
            b = s.batch(a.batch)
            n += len(b.prompts)
            imgs += len(b.prompts) + int(np.sum(b.has_source))
        dt = time.perf_counter() - t0
        print(f"{bucket:<12} {n / dt:>10.0f} {imgs / dt:>10.0f}")


if __name__ == "__main__":
    main()
