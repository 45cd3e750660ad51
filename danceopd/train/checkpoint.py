"""Atomic, verifiable checkpoints.

A checkpoint is written to ``<run>/.checkpoint-<step>.tmp``, flushed (fsync), given a ``manifest.json`` with the
size and sha256 of every file, and only then renamed to ``<run>/checkpoints/checkpoint-<step>``. A truncated or
corrupted checkpoint fails verification, is skipped with a warning naming it, and the previous good one is used.
Pruning (``checkpoints_total_limit``) only ever deletes older checkpoints, never the newest good one.

Model weights go through ``accelerator.save_state`` (safetensors) and our own tensors through safetensors; trainer
state (RNG states, data-stream positions, counters) is JSON. Nothing is unpickled on load: the optimizer and
scheduler states load with ``torch.load(weights_only=True)`` inside ``accelerator.load_state``.
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

MANIFEST = "manifest.json"
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


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    accelerator.save_state(str(tmp), safe_serialization=True)
    with open(tmp / f"trainer_state_{accelerator.process_index}.json", "w", encoding="utf-8") as f:
        json.dump({**state, "rng": rng_state()}, f)
    if accelerator.is_main_process and tensors:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "extra.safetensors"))
    accelerator.wait_for_everyone()
    from .common import kill_point

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
    accelerator.load_state(str(ckpt))
    with open(ckpt / f"trainer_state_{accelerator.process_index}.json", encoding="utf-8") as f:
        state = json.load(f)
    set_rng_state(state.pop("rng"))
    extra = ckpt / "extra.safetensors"
    tensors = load_file(str(extra)) if extra.exists() else {}
    return state, tensors
