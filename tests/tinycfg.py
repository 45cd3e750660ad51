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


def make_tiny_teachers(d: Path) -> dict[str, Path]:
    """Tiny random-weight teachers saved like shipped ones: t2i (no source input), edit/local/global (widened)."""
    import torch

    from danceopd.backends.world import save_world_model
    from danceopd.backends.world_model import WorldNetConfig, WorldUNet, widen_for_editing
    from danceopd.world import WorldTokenizer

    tok = WorldTokenizer()
    torch.manual_seed(0)
    base = WorldUNet(WorldNetConfig(vocab_size=tok.vocab_size, channels=(8, 16), attn_levels=(1,), text_dim=16,
                                    text_layers=1, emb_dim=32))
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = {"t2i": save_world_model(base, tok, d / "t2i.safetensors", meta={"resolution": 32})}
    for i, name in enumerate(("edit", "local_edit", "global_edit")):
        torch.manual_seed(i + 1)
        e = widen_for_editing(base)
        with torch.no_grad():
            for p in e.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        out[name] = save_world_model(e, tok, d / f"{name}.safetensors", meta={"resolution": 32})
    return out


def tiny_distill_yaml(path: Path, teachers: dict[str, Path], setting: str = "A", method: str = "danceopd",
                      **over) -> Path:
    if setting == "A":
        routes = [{"name": "t2i", "bucket": "t2i", "teacher": str(teachers["t2i"])},
                  {"name": "edit", "bucket": "edit", "teacher": str(teachers["edit"])}]
    else:
        routes = [{"name": "local", "bucket": "local_edit", "teacher": str(teachers["local_edit"])},
                  {"name": "global", "bucket": "global_edit", "teacher": str(teachers["global_edit"])}]
    cfg = {
        "name": f"tiny_{setting}_{method}", "setting": setting, "method": method, "seed": 0, "routes": routes,
        "student": {"init": str(teachers["t2i"])},
        "rollout": {"steps": 3}, "query": {"k": 1, "bias": "low_t"}, "flowopd": {"group_size": 2},
        "train": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 1, "threads": 1,
                  "checkpoints_total_limit": 10},
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
