"""``DiffusersFamily``: the family protocol (``backends.base.Family``) for one diffusers pipeline class: specs,
loading (shared frozen components, transformers with fused LoRAs), teachers, students (LoRA or full, merged
inits, edit widening) and export (``export.py``). A family file subclasses it and declares its conventions as
class attributes (pipeline and transformer class names, default sampler, LoRA targets)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ...errors import UserError
from ...util.lora import LoraConfig
from ...util.merge import merge_state_dicts
from ..world import SamplingConfig
from .backend import DiffusersBackend, cast_io_to_weights
from .cache import Shared
from .export import check_lora, export_student
from .options import DTYPES, DiffusersOptions, check_device_dtype, require_diffusers, unwrap
from .spec import ModelSpec, parse_spec, pipeline_class_name


class DiffusersFamily:
    """Family protocol for a diffusers pipeline class. Subclasses set ``name``, ``pipeline_classes`` (accepted
    ``model_index.json`` class names), ``pipeline_attr`` (the diffusers class used to load), ``backend_cls``,
    ``default_lora_targets``, and may override ``make_edit`` / ``edit_parameters`` / ``load_edit_weights``."""

    name = ""
    pipeline_attr = ""                       # the diffusers pipeline class used to load
    pipeline_classes: tuple[str, ...] = ()   # model_index.json class names this family takes
    transformer_class = ""                   # the diffusers transformer class
    default_sampling = SamplingConfig(steps=28, text_scale=1.0)   # the pipeline's own sampler defaults
    backend_cls = DiffusersBackend
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, opts: DiffusersOptions | None = None):
        self.opts = opts or DiffusersOptions()
        self._shared: dict = {}
        self._teachers: dict = {}
        self._device = torch.device("cpu")

    @property
    def data_resolution(self) -> int:
        return self.opts.resolution

    def configure(self, opts: DiffusersOptions):
        import os

        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            raise UserError(f"backend {self.name!r} does not support FSDP yet: the student is exported from the main "
                            "process, which needs unsharded weights; use configs/accelerate/ddp.yaml or "
                            "deepspeed_zero2.yaml (with diffusers.teacher_device: cpu_offload to save memory)")
        check_device_dtype(DTYPES[opts.dtype])
        return type(self)(opts)

    @property
    def pipeline_cls(self):
        return getattr(require_diffusers(self.name, self.pipeline_attr), self.pipeline_attr)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.opts.dtype]

    # -- specs and loading ------------------------------------------------------------------------------------------
    def check(self, spec: str) -> ModelSpec:
        require_diffusers(self.name, self.pipeline_attr)
        s = parse_spec(spec, self.name)
        cls = pipeline_class_name(s.base)
        if cls not in self.pipeline_classes:
            raise UserError(f"model {spec!r}: {s.base} holds a {cls or 'unknown'} pipeline; backend {self.name!r} "
                            f"takes {', '.join(self.pipeline_classes)}")
        return s

    def shared(self, base: Path, device=None) -> Shared:
        device = torch.device(device) if device is not None else self._device
        key = (str(base), str(device))
        if key not in self._shared:
            pipe = self.pipeline_cls.from_pretrained(str(base), transformer=None, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            for comp in pipe.components.values():
                if isinstance(comp, torch.nn.Module):
                    comp.to(device).eval().requires_grad_(False)
            self._shared[key] = Shared(pipe, device, self.dtype, self.opts.cache_size)
        return self._shared[key]

    def transformer_cls(self):
        import diffusers

        return getattr(diffusers, self.transformer_class)

    def lora_pipe(self, shared: Shared, transformer):
        """A pipeline object around ``transformer`` sharing ``shared``'s frozen components (for the LoRA loader)."""
        comps = dict(shared.pipe.components)
        comps["transformer"] = transformer
        return self.pipeline_cls(**comps)

    def load_transformer(self, spec: ModelSpec, dtype: torch.dtype, device, fuse_last: bool = True):
        """Build the transformer a spec describes: base (or full replacement), LoRAs fused in order, SD3 edit
        weights. ``fuse_last=False`` leaves the final LoRA as a live PEFT adapter (the diffusers loading path)."""
        shared = self.shared(spec.base)
        src = spec.base / "transformer"
        ops = list(spec.ops)
        for kind, p in ops:
            if kind == "transformer":
                src = p
        last_t = max([i for i, (k, _) in enumerate(ops) if k == "transformer"], default=-1)
        tr = self.transformer_cls().from_pretrained(str(src), dtype=dtype)
        tr.to(device)
        for i, (kind, p) in enumerate(ops):
            if i <= last_t:
                continue
            if kind == "edit_weights":
                tr = self.load_edit_weights(tr, p)
            elif kind == "lora":
                pipe = self.lora_pipe(shared, tr)
                pipe.load_lora_weights(str(p), adapter_name=f"l{i}")
                if fuse_last or i != len(ops) - 1:
                    pipe.fuse_lora(components=["transformer"], adapter_names=[f"l{i}"])
                    pipe.unload_lora_weights()
                tr = pipe.transformer
        return tr

    def load_backend(self, spec: str, device="cpu", fuse: bool = True, offload: bool = False):
        s = self.check(spec)
        self._device = torch.device(device)
        shared = self.shared(s.base, device)
        tr = self.load_transformer(s, self.dtype, "cpu" if offload else device, fuse_last=fuse)
        tr.eval().requires_grad_(False)
        return self.backend_cls(self, shared, tr, self.opts, s, offload=offload)

    def backend_from_pipeline(self, pipe, device="cpu"):
        """Wrap an already loaded pipeline (e.g. with ``load_lora_weights`` applied) as a backend."""
        self._device = torch.device(device)
        key = (f"pipe:{id(pipe)}", str(device))
        if key not in self._shared:
            comps = dict(pipe.components)
            tr = comps.pop("transformer")
            shell = self.pipeline_cls(**{**comps, "transformer": None})
            shell.set_progress_bar_config(disable=True)
            self._shared[key] = Shared(shell, device, self.dtype, self.opts.cache_size)
        else:
            tr = pipe.transformer
        tr.eval().requires_grad_(False)
        return self.backend_cls(self, self._shared[key], tr, self.opts, None)

    def load_teacher(self, spec: str, device="cpu"):
        self._device = torch.device(device)
        key = self.check(spec).canonical()
        if key not in self._teachers:
            self._teachers[key] = self.load_backend(spec, device, offload=self.opts.teacher_device == "cpu_offload")
        return self._teachers[key]

    # -- students -----------------------------------------------------------------------------------------------------
    def make_edit(self, transformer):
        """Give a T2I transformer a source-image input whose new weights are zero (base outputs unchanged)."""
        return transformer

    def is_edit_transformer(self, transformer) -> bool:
        return True

    def edit_parameters(self, transformer) -> dict[str, torch.nn.Parameter]:
        """Non-LoRA weights an edit student trains and exports next to its LoRA (SD3: the widened patch embed)."""
        return {}

    def load_edit_weights(self, transformer, path: Path):
        return transformer

    def build_student(self, init: str, teachers: list, needs_edit: bool, merge: list[float] | None,
                      freeze_text: bool, lora=None):
        if not freeze_text:
            raise UserError(f"student.freeze_text: false is not supported by backend {self.name!r} (the text "
                            "encoders are shared, frozen and cached)")
        use_lora = lora is not None and lora.enabled
        dtype = self.dtype if use_lora else torch.float32
        device = self._device
        if init == "merged":
            trs = [t.net for t in teachers]
            edit = needs_edit or any(self.is_edit_transformer(t) for t in trs)
            states = []
            for t in trs:
                if edit and not self.is_edit_transformer(t):
                    t = self.make_edit(copy.deepcopy(t))
                states.append({k: v.float() for k, v in t.state_dict().items()})
            coeffs = merge or [1.0 / len(states)] * len(states)
            spec = teachers[0].spec
            tr = self.transformer_cls().from_config(dict(unwrap(trs[0]).config))
            if edit and not self.is_edit_transformer(tr):
                tr = self.make_edit(tr)
            tr.load_state_dict(merge_state_dicts(states, coeffs))
            tr.to(device)
            if dtype != torch.float32:
                tr.to(dtype)
            init_text = None
        else:
            spec = self.check(init)
            tr = self.load_transformer(spec, dtype, device)
            init_text = spec.canonical()
        if needs_edit and not self.is_edit_transformer(tr):
            tr = self.make_edit(tr)
        shared = self.shared(spec.base, device)
        tr.requires_grad_(not use_lora)
        if use_lora:
            self._add_lora(tr, lora)
            extra = self.edit_parameters(tr)
            for p in extra.values():
                p.data = p.data.float()
                p.requires_grad_(True)
            for name in sorted({n.rsplit(".", 1)[0] for n in extra}):
                cast_io_to_weights(unwrap(tr).get_submodule(name))
        else:
            tr.float()
        if self.opts.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        tr.train()
        be = self.backend_cls(self, shared, tr, self.opts, spec)
        be.init_spec = init_text
        be.base_spec = spec
        return be

    def _add_lora(self, transformer, lora):
        from peft import LoraConfig as PeftLoraConfig

        targets = list(lora.targets)
        if targets == LoraConfig().targets:   # the engine's default names the world model's layers
            targets = list(self.default_lora_targets)
        names = [n for n, _ in transformer.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.split(".")[-1] for n, m in transformer.named_modules()
                             if isinstance(m, torch.nn.Linear)})
            raise UserError(f"student.lora.targets: no module of the {self.name} transformer is named {missing}; "
                            f"linear layer names: {', '.join(leaves[:30])}")
        transformer.add_adapter(PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=targets, init_lora_weights=True))
        for n, p in transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    # -- export -------------------------------------------------------------------------------------------------------
    def export(self, student, out: Path, sampling: SamplingConfig, meta: dict, lora: bool) -> Path:
        return export_student(self, student, out, sampling, meta, lora)

    def check_lora(self, student, out: Path) -> dict:
        return check_lora(self, student, out)
