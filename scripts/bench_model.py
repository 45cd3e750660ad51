"""Benchmark the default ShapesWorld generator: train images/s and sample images/s (measured in one run).

    python scripts/bench_model.py [--config configs/world/t2i.yaml] [--batch 64] [--iters 20] [--threads 2]

The model is built from the config's model section (default: the shipped T2I base's recipe), with fresh weights.

Train: one SFT step (forward + backward + AdamW) on world batches. Sample: Euler with the default 16 steps, with
and without classifier-free guidance (CFG doubles the batch of every forward).
"""

from __future__ import annotations

import argparse
import time

import torch

from danceopd.backends.world import WorldBackend
from danceopd.config import load_config
from danceopd.core.flow import interpolate, sample_t, velocity_target
from danceopd.train.data import WorldData
from danceopd.train.sft import SFTConfig, build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/world/t2i.yaml", help="SFT config whose model to build")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    net, tok = build_model(load_config(SFTConfig, a.config))
    be = WorldBackend(net, tok)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    data = WorldData("t2i", a.seed)
    print(f"model ({a.config}): {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params, batch {a.batch}, "
          f"{a.threads} threads")

    def train_step():
        b = data.next(a.batch)
        noise = torch.randn_like(b.x_0)
        t = sample_t(a.batch)
        v = be.velocity(interpolate(b.x_0, noise, t), t, be.encode(b.prompts))
        loss = (v - velocity_target(b.x_0, noise)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        train_step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        train_step()
    dt = time.perf_counter() - t0
    print(f"train:            {a.iters * a.batch / dt:8.1f} images/s  ({dt / a.iters * 1000:.0f} ms/step)")
    prompts = data.next(a.batch).prompts
    for scale, label in ((1.0, "sample (no CFG)"), (3.0, "sample (CFG 3)")):
        be.sample(prompts[:8], seed=0, steps=2, text_scale=scale)
        n_rep = max(1, a.iters // 10)
        t0 = time.perf_counter()
        for i in range(n_rep):
            be.sample(prompts, seed=i, steps=a.steps, text_scale=scale)
        dt = time.perf_counter() - t0
        print(f"{label + ':':17} {n_rep * a.batch / dt:8.1f} images/s  ({a.steps} Euler steps)")


if __name__ == "__main__":
    main()
