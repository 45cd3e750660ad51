"""Retrain the evaluation suite's frozen networks and write them (fp16 safetensors) to danceopd/assets/eval/.

    python scripts/train_eval_nets.py --net all --seed 0       # what produced the shipped files (~12 min, 1 core)
    python scripts/train_eval_nets.py --net judge --seed 0     # one network: judge | critic | clip

Deterministic for a given --seed (one thread, fixed RNG streams, fixed step counts). Each network trains in
about 2-6 minutes on one core. After training the judge it prints its accuracy on fresh scenes from a stream never
used for training. Bump JUDGE_VERSION (judge + critic) / CLIP_VERSION in danceopd/eval/nets.py whenever the
shipped weights change meaning.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from danceopd.eval.nets import ASSET_DIR, CLIP_FILE, CRITIC_FILE, JUDGE_FILE, save_net
from danceopd.eval.training import train_clip, train_critic, train_judge
from danceopd.eval.validity import judge_accuracy
from danceopd.world import DEFAULT_WORLD


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=("judge", "critic", "clip", "all"), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge-steps", type=int, default=1200)
    ap.add_argument("--critic-steps", type=int, default=1000)
    ap.add_argument("--clip-steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ASSET_DIR, help="folder for the .safetensors files")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = DEFAULT_WORLD
    if a.net in ("judge", "all"):
        t0 = time.time()
        net, meta = train_judge(cfg, seed=a.seed, steps=a.judge_steps, batch=a.batch)
        save_net(net, a.out / JUDGE_FILE, meta)
        print(f"wrote {a.out / JUDGE_FILE} ({(a.out / JUDGE_FILE).stat().st_size / 1e6:.2f} MB, {time.time() - t0:.0f}s)")
    if a.net in ("critic", "all"):
        t0 = time.time()
        net, meta = train_critic(cfg, seed=a.seed, steps=a.critic_steps, batch=a.batch)
        save_net(net, a.out / CRITIC_FILE, meta)
        print(f"wrote {a.out / CRITIC_FILE} ({(a.out / CRITIC_FILE).stat().st_size / 1e6:.2f} MB, "
              f"{time.time() - t0:.0f}s, q_clean {meta['q_clean']})")
    if a.net in ("judge", "all") and (a.out / CRITIC_FILE).is_file():
        from danceopd.eval.judge import load_judge

        acc = judge_accuracy(load_judge(a.out), cfg, n=3000, seed=123456789)
        print("fresh-seed accuracy (fp16 weights):", {k: round(v, 5) for k, v in acc.items()})
    if a.net in ("clip", "all"):
        t0 = time.time()
        net, meta = train_clip(cfg, seed=a.seed, steps=a.clip_steps, batch=a.batch)
        save_net(net, a.out / CLIP_FILE, meta)
        print(f"wrote {a.out / CLIP_FILE} ({(a.out / CLIP_FILE).stat().st_size / 1e6:.2f} MB, {time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
