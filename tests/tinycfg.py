"""Tiny configs for trainer tests (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_MODEL = {"channels": [8, 16], "attn_levels": [1], "text_dim": 16, "text_layers": 1, "emb_dim": 32}


def tiny_sft_yaml(path: Path, **over) -> Path:
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": TINY_MODEL,
        "data": {"bucket": "t2i", "resolution": 32},
        "optim": {"lr": 0.002, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 4, "log_every": 1, "sample_every": 0, "checkpoint_every": 2,
                  "checkpoints_total_limit": 10, "threads": 1},
        "sampling": {"steps": 2},
    }
    for k, v in over.items():
        sec, _, key = k.partition(".")
        if key:
            cfg.setdefault(sec, {})[key] = v
        else:
            cfg[sec] = v
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
