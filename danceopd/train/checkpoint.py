"""Atomic, verifiable checkpoints.

A checkpoint is written to ``<run>/.checkpoint-<step>.tmp``, flushed (fsync), given a ``manifest.json`` with the
size and sha256 of every file, and only then renamed to ``<run>/checkpoints/checkpoint-<step>``. A truncated or
corrupted checkpoint fails verification, is skipped with a warning naming it, and the previous good one is used.
Pruning (``checkpoints_total_limit``) only ever deletes older checkpoints, never the newest good one.

Model weights go through ``accelerator.save_state`` (safetensors) and our own tensors through safetensors; trainer
state (RNG states, data-stream positions, counters) is JSON. Nothing is unpickled on load: the optimizer and
scheduler states load with ``torch.load(weights_only=True)`` inside ``accelerator.load_state``.

A model with LoRA layers (a LoRA student) is saved with only what trains: Accelerate save/load hooks
(``register_state_hooks``, the mechanism of the diffusers training examples) cut its ``model.safetensors`` down to
the parameters that require grad (the LoRA tensors, an SD3 edit student's widened patch embedding) and write
``model_state.json`` (which keys, plus a fingerprint of the frozen weights). On resume the frozen weights are the
ones the run rebuilt from its config; the fingerprint refuses a resume on top of different ones (an init folder
changed on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .common import kill_point

MANIFEST = "manifest.json"
MODEL_STATE = "model_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path):
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Python, numpy (legacy global) and torch CPU RNG states as JSON-able data."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


# ---- LoRA-sized model state (Accelerate save/load hooks) -----------------------------------------------------------
def _has_lora(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _bare(model):
    """The module under DDP / compile wrappers (its parameter names do not depend on how it was launched)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=True)


def _weights_file(i: int) -> str:
    return "model.safetensors" if i == 0 else f"model_{i}.safetensors"


@torch.no_grad()
def frozen_fingerprint(model) -> list[float]:
    """[count, sum, sum of |w|] over the frozen parameters, in float64 (one device sync)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if not frozen:
        return [0.0, 0.0, 0.0]
    s = torch.stack([p.sum(dtype=torch.float64) for p in frozen]).sum()
    a = torch.stack([p.abs().sum(dtype=torch.float64) for p in frozen]).sum()
    return [float(sum(p.numel() for p in frozen)), *torch.stack([s, a]).cpu().tolist()]


def _save_state_hook(models, weights, output_dir):
    """Before ``save_state`` writes ``weights``: keep only the trainable parameters of models with LoRA layers."""
    if len(weights) != len(models):        # DeepSpeed / FSDP save their models themselves
        return
    from accelerate import PartialState

    info = {}
    for i, model in enumerate(models):
        model = _bare(model)
        if not _has_lora(model):
            continue
        keys = {n for n, p in model.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in model.state_dict().items() if k in keys}   # bare names: any process count
        info[_weights_file(i)] = {"trainable_only": True, "keys": len(keys),
                                  "frozen_fingerprint": frozen_fingerprint(model)}
    if info and PartialState().is_main_process:
        with open(Path(output_dir) / MODEL_STATE, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)


def _load_state_hook(models, input_dir):
    """Before ``load_state`` loads the models: load trainable-only weight files ourselves (strictly: exactly the
    trainable parameters, on top of the same frozen weights) and take every model off Accelerate's list."""
    meta = Path(input_dir) / MODEL_STATE
    if not meta.is_file():
        return                                 # full weight files: Accelerate loads them as usual
    info = json.loads(meta.read_text(encoding="utf-8"))
    for i, model in enumerate(models):
        name = _weights_file(i)
        model = _bare(model)
        dev = next(model.parameters()).device
        sd = load_file(str(Path(input_dir) / name), device=str(dev))
        rec = info.get(name)
        if rec is None:                        # a full weight file next to a trainable-only one
            model.load_state_dict(sd, strict=True)
            continue
        want = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(sd) != want:
            extra, missing = sorted(set(sd) - want), sorted(want - set(sd))
            raise RuntimeError(f"checkpoint {input_dir}: {name} holds other trainable parameters than this run's "
                               f"student (unexpected {extra[:3]}, missing {missing[:3]})")
        old, new = rec["frozen_fingerprint"], frozen_fingerprint(model)
        if old[0] != new[0] or any(abs(a - b) > 1e-6 * max(1.0, abs(old[2])) for a, b in zip(old[1:], new[1:])):
            raise RuntimeError(f"checkpoint {input_dir}: the student's frozen weights differ from the ones this "
                               "checkpoint was trained on (did the student.init files change?); cannot resume")
        model.load_state_dict(sd, strict=False)
    models.clear()


def register_state_hooks(accelerator) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` store LoRA models trainable-only (idempotent)."""
    if getattr(accelerator, "_danceopd_state_hooks", False):
        return
    accelerator.register_save_state_pre_hook(_save_state_hook)
    accelerator.register_load_state_pre_hook(_load_state_hook)
    accelerator._danceopd_state_hooks = True


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"checkpoint-{step:08d}"


def save_checkpoint(accelerator, run_dir, step: int, state: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Save accelerator state + ``tensors`` (safetensors) + ``state`` (JSON, per process) atomically."""
    run_dir = Path(run_dir)
    final = checkpoint_dir(run_dir, step)
    tmp = run_dir / f".checkpoint-{step:08d}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    register_state_hooks(accelerator)
    accelerator.save_state(str(tmp), safe_serialization=True)
    with open(tmp / f"trainer_state_{accelerator.process_index}.json", "w", encoding="utf-8") as f:
        json.dump({**state, "rng": rng_state()}, f)
    if accelerator.is_main_process and tensors:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "extra.safetensors"))
    accelerator.wait_for_everyone()
    kill_point(f"ckpt:{step}")
    if accelerator.is_main_process:
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(tmp))] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump({"step": step, "files": files, "num_processes": accelerator.num_processes}, f, indent=1)
        _fsync_tree(tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # same step saved again (e.g. final save): replace atomically via a side name
            old = final.with_name(final.name + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def verify(ckpt: Path) -> str | None:
    """None if ``ckpt`` is complete and intact, else the reason."""
    m = ckpt / MANIFEST
    if not m.is_file():
        return "no manifest (incomplete write)"
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
        files = manifest["files"]
    except Exception as e:
        return f"unreadable manifest ({type(e).__name__})"
    for rel, info in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != info["size"]:
            return f"file {rel} has size {p.stat().st_size}, manifest says {info['size']} (truncated?)"
        if _sha256(p) != info["sha256"]:
            return f"file {rel} checksum mismatch (corrupted)"
    return None


def newest_step(run_dir) -> int:
    """The step a resume of ``run_dir`` starts from: its newest checkpoint that verifies (0 when there is none)."""
    good = latest_good(run_dir)
    return 0 if good is None else next(step for step, p in list_checkpoints(run_dir) if p == good)


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_good(run_dir) -> Path | None:
    """The newest checkpoint that verifies; broken ones are skipped with a warning naming them."""
    for _step, p in reversed(list_checkpoints(run_dir)):
        why = verify(p)
        if why is None:
            return p
        warnings.warn(f"skipping checkpoint {p}: {why}", stacklevel=2)
    return None


def prune(run_dir, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints beyond ``limit``; the newest good checkpoint is never deleted."""
    if not limit or limit < 1:
        return []
    ckpts = list_checkpoints(run_dir)
    good = latest_good(run_dir)
    removed = []
    excess = len(ckpts) - limit
    for _step, p in ckpts:
        if excess <= 0:
            break
        if p == good:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        excess -= 1
    return removed


def load_checkpoint(accelerator, ckpt: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore accelerator state from a verified checkpoint; returns (this process's JSON state, tensors)."""
    why = verify(ckpt)
    if why is not None:
        raise RuntimeError(f"checkpoint {ckpt} is not usable: {why}")
    register_state_hooks(accelerator)
    accelerator.load_state(str(ckpt))
    with open(ckpt / f"trainer_state_{accelerator.process_index}.json", encoding="utf-8") as f:
        state = json.load(f)
    set_rng_state(state.pop("rng"))
    extra = ckpt / "extra.safetensors"
    tensors = load_file(str(extra)) if extra.exists() else {}
    return state, tensors
