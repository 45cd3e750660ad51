"""The benchmark scripts stay runnable against the current method / backend API (the README's numbers come from
them): scripts/bench_distill.py's harness takes one tiny optimizer step of every
training method and times the floor passes."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_distill  # noqa: E402


class _Args:
    batch, rollout_steps, k, bias, iters = 4, 2, 1, "low_t", 1


def test_bench_distill_harness_steps_every_method():
    torch.manual_seed(0)
    bench = bench_distill.Bench(_Args)
    batches = {r.name: bench.batch(r.name) for r in bench.routes}
    for name, cls in bench_distill.METHODS.items():
        method = cls()
        if not method.trains:   # weight merging: no optimizer step
            continue
        picked = bench.routes if method.group_routes else bench.routes[:1]
        dt = bench.step(method, picked, batches)
        assert dt > 0 and all(p.grad is None for p in bench.params), name   # zeroed after the step
    fl = bench.floor(batches["t2i"], 0)
    assert all(math.isfinite(v) for v in fl)
