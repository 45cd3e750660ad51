"""Export of a trained diffusers student, its LoRA self-check, and loading for generation (``danceopd sample/edit``).

A LoRA student writes ``pytorch_lora_weights.safetensors`` with ``<Pipeline>.save_lora_weights`` (keys prefixed
``transformer.``, PEFT metadata included so rank and alpha round-trip), then checks that a fresh copy of the init
transformer with the file loaded through ``load_lora_weights`` gives the trained student's outputs on a fixed
input (``lora_check`` in ``danceopd_model.json``; inputs and outputs in ``lora_check.safetensors``). A full student
writes ``transformer/`` (``save_pretrained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...errors import UserError
from ...util.atomic import write_json_atomic
from ..world import SamplingConfig
from .options import (
    CHECK_FILE,
    EDIT_WEIGHTS_FILE,
    FORMAT,
    LORA_FILE,
    MODEL_JSON,
    DiffusersOptions,
    require_diffusers,
)
from .spec import parse_spec, pipeline_class_name


def export_student(family, student, out: Path, sampling: SamplingConfig, meta: dict, lora: bool) -> Path:
    from accelerate.utils import extract_model_from_parallel
    from safetensors.torch import save_file

    out = Path(out)
    # the bare module, without Accelerate's mixed-precision forward wrapper (training is over)
    net = extract_model_from_parallel(student.model, keep_fp32_wrapper=False)
    student.model = net
    was_training = net.training
    net.eval()
    info = {"format": FORMAT, "family": family.name, "kind": "lora" if lora else "full",
            "edit": bool(student.is_edit and family.is_edit_transformer(net)),
            "resolution": student.resolution, "sampling": dict(sampling.__dict__), "meta": meta}
    if lora:
        if getattr(student, "init_spec", None) is None:
            raise UserError("a LoRA student needs a loadable student.init (not 'merged')")
        from peft.utils import get_peft_model_state_dict

        info["init"] = student.init_spec
        sd = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(net).items()}
        family.pipeline_cls.save_lora_weights(str(out), transformer_lora_layers=sd,
                                            transformer_lora_adapter_metadata=net.peft_config["default"].to_dict())
        extra = family.edit_parameters(net)
        if extra:
            info["edit_weights"] = EDIT_WEIGHTS_FILE
            save_file({k: v.detach().float().contiguous().cpu() for k, v in extra.items()},
                      str(out / info["edit_weights"]))
    else:
        info["init"] = str(student.base_spec.base)
        net.save_pretrained(str(out / "transformer"))
    write_json_atomic(out / MODEL_JSON, info)
    if lora and family.opts.lora_check:
        info["lora_check"] = check_lora(family, student, out)
        write_json_atomic(out / MODEL_JSON, info)
    net.train(was_training)
    return out

@torch.no_grad()
def check_lora(family, student, out: Path) -> dict:
    """Reload the exported LoRA through the pipeline's ``load_lora_weights`` into a fresh transformer built
    from the student's init, and compare transformer outputs with the trained student's on a fixed input."""
    from safetensors.torch import save_file

    spec = parse_spec(str(out), family.name)
    fresh_tr = family.load_transformer(spec, family.dtype, student.device, fuse_last=False)
    fresh_tr.eval()
    fresh = family.backend_cls(family, student.shared, fresh_tr, family.opts, spec)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(student.latent_shape(1), generator=g).to(student.device)
    t = torch.tensor([0.7], device=student.device)
    prompt = ["a photo of a red apple on a wooden table"]
    src = None
    if student.is_edit:
        src = (torch.rand((1, 3, student.resolution, student.resolution), generator=g) * 2 - 1)
    student = student.eval_view()
    v_s = student.velocity(x, t, student.encode(prompt, src)).float()
    v_f = fresh.velocity(x, t, fresh.encode(prompt, src)).float()
    err = float((v_s - v_f).abs().max())
    scale = float(v_s.abs().max()) + 1e-6
    tol = 1e-4 if family.dtype == torch.float32 else 3e-2
    tensors = {"x": x.cpu(), "t": t.cpu(), "v_student": v_s.cpu()}
    if src is not None:
        tensors["source"] = src.cpu()
    save_file(tensors, str(out / CHECK_FILE), metadata={"prompt": prompt[0]})
    del fresh, fresh_tr
    result = {"max_abs_diff": err, "relative": err / scale, "ok": err / scale <= tol, "prompt": prompt[0]}
    if not result["ok"]:
        raise RuntimeError(f"LoRA family-check failed: the LoRA reloaded through diffusers differs from the "
                           f"trained student by {err:.3g} (relative {err / scale:.3g} > {tol})")
    return result


# ---- generation entry points (CLI) -------------------------------------------------------------------------------
def pipeline_families() -> dict[str, str]:
    """{model_index.json pipeline class: family name}, from every family's ``pipeline_classes``."""
    from ..registry import get_family
    from .families import load_all

    return {cls: name for name in load_all() for cls in get_family(name).pipeline_classes}


def is_diffusers_run(path) -> bool:
    return Path(str(path)).is_dir() and (Path(str(path)) / MODEL_JSON).is_file()


def generation_dtype(device: torch.device) -> str:
    """Weights for sampling: bfloat16 on a GPU that has it, float16 on older GPUs, float32 on the CPU."""
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def load_for_generation(model: str | None = None, pipeline: str | None = None, lora: str | None = None,
                        resolution: int | None = None, device=None, dtype: str | None = None):
    """A backend for ``danceopd sample/edit``: ``--pipeline DIR [--lora DIR|FILE]`` (the diffusers pipeline, the
    LoRA loaded with ``load_lora_weights``) or ``--model RUN`` (a danceopd diffusers run folder). ``dtype``: the
    weights' dtype (default ``generation_dtype``)."""
    from ..registry import get_family

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or generation_dtype(device)
    info: dict = {}
    if pipeline is None:
        info = json.loads((Path(model) / MODEL_JSON).read_text(encoding="utf-8"))
        fam_name = info.get("family", "")
    else:
        base = Path(pipeline)
        if not (base / "model_index.json").is_file():
            raise UserError(f"--pipeline {base}: not a diffusers pipeline folder (no model_index.json)")
        cls, supported = pipeline_class_name(base), pipeline_families()
        if cls not in supported:
            raise UserError(f"--pipeline {base}: {cls or 'unknown'} pipelines are not supported; supported: "
                            f"{', '.join(supported)}")
        fam_name = supported[cls]
        if lora is not None and is_diffusers_run(lora):
            info = json.loads((Path(lora) / MODEL_JSON).read_text(encoding="utf-8"))
    res = resolution or int(info.get("resolution") or 1024)
    family = get_family(fam_name).configure(DiffusersOptions(resolution=res, dtype=dtype))
    if pipeline is None:
        be = family.load_backend(str(model), device, fuse=False)   # the diffusers loading path, unfused
    else:
        require_diffusers(fam_name, family.pipeline_attr)
        pipe = family.pipeline_cls.from_pretrained(str(base), dtype=family.dtype)
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            lp = Path(lora)
            if info:
                init = parse_spec(info["init"], fam_name)
                if init.base != base.resolve() or init.ops:
                    raise UserError(f"--lora {lp}: this LoRA was trained on top of {info['init']!r}, not the plain "
                                    f"pipeline {base}; sample with --model {lp} instead")
                if info.get("kind") != "lora":
                    raise UserError(f"--lora {lp}: a full-weights run (no LoRA); sample with --model {lp}")
                if info.get("edit_weights"):
                    pipe.transformer = family.load_edit_weights(pipe.transformer, lp / info["edit_weights"])
            if lp.is_dir():
                if not (lp / LORA_FILE).is_file():
                    raise UserError(f"--lora {lp}: no {LORA_FILE} in this folder")
                pipe.load_lora_weights(str(lp))
            elif lp.is_file():
                pipe.load_lora_weights(str(lp.parent), weight_name=lp.name)
            else:
                raise UserError(f"--lora {lp}: not found")
        pipe.to(device)
        be = family.backend_from_pipeline(pipe, device)
    be.sampling = SamplingConfig(**info["sampling"]) if info.get("sampling") else family.default_sampling
    return be
