"""Tiny diffusers pipelines and teachers for the backend tests (built once per session, offline)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

FAMILIES = ("sd3", "zimage", "flux_kontext")
RES = 64


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.02):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def random_lora(family: str, base: Path, out: Path, seed: int = 5, rank: int = 4) -> Path:
    """A diffusers-format LoRA with non-zero weights on the tiny transformer (an 'edit teacher' delta)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from danceopd.backends.registry import get_family

    fam = get_family(family)
    tr = fam.transformer_cls().from_pretrained(str(base / "transformer"))
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    fam.pipeline_cls.save_lora_weights(str(out), transformer_lora_layers=get_peft_model_state_dict(tr),
                                       transformer_lora_adapter_metadata=tr.peft_config["default"].to_dict())
    return out


def build_all(root: Path) -> dict[str, dict[str, str]]:
    """{family: {"base": dir, "t2i": spec, "edit": spec}} for setting-A style runs."""
    from danceopd.backends import tiny
    from danceopd.backends.registry import get_family

    out = {}
    for fam in FAMILIES:
        base = tiny.build(fam, root / fam)
        if fam == "sd3":
            f = get_family("sd3")
            tr = f.transformer_cls().from_pretrained(str(base / "transformer"))
            tr = f.make_edit(tr)
            perturb(tr, 3)
            tr.save_pretrained(str(root / "sd3_edit_transformer"))
            edit = f"sd3:{base}+transformer:{root / 'sd3_edit_transformer'}"
        else:
            lora = random_lora(fam, base, root / f"{fam}_edit_lora")
            edit = f"{fam}:{base}+lora:{lora}"
        out[fam] = {"base": str(base), "t2i": f"{fam}:{base}", "edit": edit}
    return out


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
