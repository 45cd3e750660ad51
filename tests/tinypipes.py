"""Tiny diffusers pipelines and teachers for the backend tests (built once per session, offline)."""

from __future__ import annotations

from pathlib import Path

import yaml

FAMILIES = ("sd3", "zimage", "flux_kontext")
RES = 64


def build_all(root: Path) -> dict[str, dict[str, str]]:
    """{family: {"base": dir, "t2i": spec, "edit": spec}} for setting-A style runs."""
    from danceopd.testing.tiny_pipelines import build_demo

    return {fam: build_demo(fam, root) for fam in FAMILIES}


def distill_yaml(path: Path, family: str, specs: dict, method: str = "danceopd", lora: bool = True, **over) -> Path:
    cfg = {
        "name": f"tiny_{family}_{method}", "backend": family, "method": method, "seed": 0,
        "routes": [{"name": "t2i", "bucket": "t2i", "teacher": specs["t2i"]},
                   {"name": "edit", "bucket": "edit", "teacher": specs["edit"]}],
        "student": {"init": specs["t2i"], "lora": {"enabled": lora, "rank": 4, "alpha": 8.0}},
        "teacher_guidance": {"text_scale": 2.0, "image_scale": 1.0},
        "rollout": {"steps": 2, "shift": 3.0}, "query": {"k": 1}, "flowopd": {"group_size": 2},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 2, "threads": 1,
                  "warmup_steps": 1},
        "sampling": {"steps": 2},
        "diffusers": {"resolution": RES, "max_sequence_length": 32},
    }
    for k, v in over.items():
        sec, _, key = k.partition(".")
        if key:
            cfg.setdefault(sec, {})[key] = v
        else:
            cfg[sec] = v
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
