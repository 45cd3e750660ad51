"""Benchmark a DanceOPD step on a tiny random-weight SD3 pipeline (built offline, danceopd.testing.tiny_pipelines).

    python scripts/bench_sd3.py [--size tiny|small] [--resolution 64] [--batch 8] [--rollout-steps 8] [--iters 3]

Same model (SD3 transformer student with a LoRA, the base pipeline as a CFG teacher), same config, same update:

- ours: the engine's DanceOPD loss (batched student rollout, no grad, stopped at the deepest query state; K=1
  low-noise query per sample; one batched teacher forward with its CFG; one student forward + backward), then
  clip + AdamW;
- naive: one sample per micro-step with gradient accumulation over the batch, the full rollout to t = 0 with every
  state kept, separate conditional / unconditional teacher passes at the query state.

Prints samples/s of both (medians over --iters timed steps after a warm-up step) and the ratio ours / naive.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from danceopd.backends.diffusers import DiffusersOptions
from danceopd.backends.registry import get_family
from danceopd.core import Route, sample_query_indices
from danceopd.methods import METHODS, MethodConfig, StepContext, TeacherField
from danceopd.testing.tiny_pipelines import build_sd3
from danceopd.train.data import WorldData
from danceopd.util.lora import LoraConfig

TEXT_SCALE = 3.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--resolution", type=int, default=64, help="32 or 64 (ShapesWorld prompts)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rollout-steps", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as d:
        base = build_sd3(Path(d) / "sd3", size=a.size)
        fam = get_family("sd3").configure(DiffusersOptions(resolution=a.resolution, max_sequence_length=64))
        teacher = fam.load_teacher(str(base))
        student = fam.build_student(str(base), [teacher], needs_edit=False, merge=None, freeze_text=True,
                                    lora=LoraConfig(enabled=True, rank=8, alpha=8.0, targets=LoraConfig().targets))
    params = [p for p in student.net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    cfg = MethodConfig(rollout_steps=a.rollout_steps, rollout_shift=3.0, k=1, bias="low_t")
    ctx = StepContext(student, {"t2i": TeacherField(teacher, TEXT_SCALE)}, cfg)
    route, method = Route("t2i", "t2i", "t2i"), METHODS["danceopd"]()
    data = WorldData("t2i", 0, a.resolution)
    ts = student.timesteps(a.rollout_steps, 3.0)

    def ours(batch):
        t0 = time.perf_counter()
        loss, _ = method.loss(ctx, route, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def naive(batch):
        t0 = time.perf_counter()
        for b in range(a.batch):                                   # one sample per micro-step
            prompt = [batch.prompts[b]]
            q = int(sample_query_indices(1, a.rollout_steps, k=1, bias="low_t")[0, 0])
            states = [torch.randn(student.latent_shape(1))]
            with torch.no_grad():                                  # full rollout, every state kept
                for i in range(a.rollout_steps):
                    v = student.velocity(states[-1], ts[i].expand(1), student.encode(prompt))
                    states.append(states[-1] + (ts[i + 1] - ts[i]) * v)
                x, t = states[q], ts[q].expand(1)
                v_c = teacher.velocity(x, t, teacher.encode(prompt))          # separate cond / uncond passes
                v_u = teacher.velocity(x, t, teacher.encode([""]))
                v_t = v_u + TEXT_SCALE * (v_c - v_u)
            v_s = student.velocity(x, t, student.encode(prompt))
            (((v_s - v_t) ** 2).mean() / a.batch).backward()      # gradient accumulation
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    n = sum(p.numel() for p in student.net.parameters())
    print(f"SD3 transformer ({a.size}, {n / 1e6:.2f}M params + LoRA r8), {a.resolution}px, batch {a.batch}, "
          f"rollout {a.rollout_steps} steps, teacher CFG {TEXT_SCALE}, torch threads {torch.get_num_threads()}")
    res = {}
    for name, fn in (("ours", ours), ("naive", naive)):
        fn(data.next(a.batch))                                     # warm-up
        times = [fn(data.next(a.batch)) for _ in range(a.iters)]
        res[name] = a.batch / statistics.median(times)
        print(f"{name:>6}: {statistics.median(times):.3f} s/step, {res[name]:.2f} samples/s")
    print(f"ratio ours / naive: {res['ours'] / res['naive']:.2f}x")


if __name__ == "__main__":
    main()
