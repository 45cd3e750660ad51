"""The ``world`` family (``backends.base.Family``): how the trainers load ShapesWorld teachers, build a student
(from a model, or the weight-merged teachers) and export it."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..util.atomic import save_safetensors_atomic
from ..util.lora import LoraConfig, add_lora, lora_state, merged_state_dict
from ..util.merge import merge_state_dicts
from .world import SamplingConfig, WorldBackend, save_world_model
from .world_model import WorldUNet, widen_for_editing
from .world_specs import load_backend, resolve_model_path


class WorldFamily:
    """Backend family of ShapesWorld models (pixel space, 32 or 64 px, any options section ignored)."""

    name = "world"
    data_resolution: int | None = None     # ShapesWorld streams render at the teachers' resolution

    def configure(self, options) -> WorldFamily:
        return self

    def check(self, spec: str) -> None:
        try:
            resolve_model_path(spec)
        except FileNotFoundError:
            raise UserError(f"model {spec!r} not found (world:<name>, a .safetensors file or a run folder)") from None

    def load_teacher(self, spec: str, device="cpu") -> WorldBackend:
        be = load_backend(spec, device=device)
        be.model.eval()
        return be

    def build_student(self, init: str, teachers: list[WorldBackend], needs_edit: bool,
                      merge: list[float] | None, freeze_text: bool, lora: LoraConfig | None = None) -> WorldBackend:
        """``init``: a model spec, or ``merged`` (weighted sum of the teachers, ``merge`` coefficients).
        Widened with zero-initialized source channels when a route edits; ``lora`` (enabled): PEFT adapters on
        the named layers, everything else frozen."""
        if init == "merged":
            edit = needs_edit or any(t.net.cfg.edit for t in teachers)
            nets = [widen_for_editing(t.net) if edit and not t.net.cfg.edit else t.net for t in teachers]
            coeffs = merge or [1.0 / len(nets)] * len(nets)
            net = WorldUNet(nets[0].cfg)
            net.load_state_dict(merge_state_dicts([n.state_dict() for n in nets], coeffs))
            tok, res = teachers[0].tokenizer, teachers[0].resolution
        else:
            be = self.load_teacher(init)
            net, tok, res = be.net, be.tokenizer, be.resolution
            if needs_edit and not net.cfg.edit:
                net = widen_for_editing(net)
        for p in net.parameters():
            p.requires_grad_(True)
        if freeze_text:
            for p in net.text.parameters():
                p.requires_grad_(False)
        if lora is not None and lora.enabled:
            net = add_lora(net, lora)
        return WorldBackend(net, tok, res)

    def export(self, student: WorldBackend, out: Path, sampling: SamplingConfig, meta: dict, lora: bool) -> Path:
        m = student.model
        while hasattr(m, "module"):
            m = m.module
        base = m
        while not isinstance(base, WorldUNet):
            base = getattr(base, "base_model", None) or base.module
        state = merged_state_dict(m) if lora else m.state_dict()
        plain = WorldUNet(base.cfg)
        plain.load_state_dict(state)
        if lora:
            save_safetensors_atomic({k: v.contiguous() for k, v in lora_state(m).items()},
                                    Path(out) / "lora.safetensors")
        return save_world_model(plain, student.tokenizer, Path(out) / "model.safetensors", sampling, meta=meta)
