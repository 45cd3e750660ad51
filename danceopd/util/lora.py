"""LoRA adapters (PEFT): the config section, injection on named linear layers, the adapter's own tensors, and a
plain state dict with the deltas merged in."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError


@dataclass
class LoraConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q", "kv", "proj", "qkv", "film"])

    def validate(self):
        if self.rank < 1:
            raise ValueError("lora.rank must be >= 1")
        if not self.targets:
            raise ValueError("lora.targets must name at least one layer")


def add_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Inject PEFT LoRA adapters on the model's linear layers named in ``cfg.targets``; freeze everything else."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.targets if t not in names]
    if missing:
        raise UserError(f"lora.targets: no linear layers named {missing}; available: {sorted(names)}")
    pc = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.targets)
    model = inject_adapter_in_model(pc, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def lora_state(model) -> dict[str, torch.Tensor]:
    """The adapter tensors alone (PEFT's key names)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Plain state dict with LoRA deltas merged into the base weights (no-op for models without LoRA)."""
    from peft.tuners.lora import LoraLayer

    sd = {}
    lora_mods = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for n, m in lora_mods.items():
        base = m.get_base_layer()
        delta = m.get_delta_weight("default")
        sd[f"{n}.weight"] = base.weight + delta
        if base.bias is not None:
            sd[f"{n}.bias"] = base.bias.clone()
    for k, v in model.state_dict().items():
        if "lora_" in k or ".base_layer." in k:
            continue
        sd[k] = v
    return sd
