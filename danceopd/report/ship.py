"""The converged students shipped with the package (``danceopd/assets/students``): seed 0 of every main method in
each setting whose curves have finished (a setting is shipped whole), copied in fp16 from the full preset's
published curve cells, with a manifest like the teachers' (config, overrides, command, sha256, steps, scores). The quick preset evaluates them instead of training
students from scratch, so the main command shows the comparison at convergence in minutes.

    python scripts/ship_students.py --from results/full      # after the full preset's curves have finished
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..errors import UserError
from ..util.atomic import atomic_path, write_json_atomic
from . import cell, plan
from .plateau import MAIN_METHODS, longest_curves

PREFIX = "shipped:"   # model spec of a shipped student in a plan: shipped:<setting>_<method>


def manifest(folder: Path | None = None) -> dict[str, dict]:
    """{name: entry} of the shipped students ({} when none are shipped)."""
    return cell.student_manifest(folder)


def student_path(spec: str, folder: Path | None = None) -> Path:
    """The weights file of ``shipped:<name>``; a one-line error naming the shipped ones when it is missing."""
    name = spec[len(PREFIX):]
    p = Path(folder or cell.STUDENT_DIR) / f"{name}.safetensors"
    if not p.is_file():
        have = ", ".join(sorted(manifest(folder))) or "none"
        raise UserError(f"{spec}: no such shipped student (shipped: {have})")
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def curve_students(results: Path) -> dict[str, dict[str, tuple[dict, Path]]]:
    """{setting: {method: (record, student weights)}} of the published seed-0 curve students in ``results`` (the
    full preset's publish folder: ``cells/*.json`` + ``students/*.safetensors``), per setting, the longest curve of
    each (a curve extension over the cell it continues)."""
    recs, students = {}, {}
    for f in sorted(Path(results, "cells").glob("*.json")):
        w = Path(results, "students", f.with_suffix(".safetensors").name)
        if w.is_file():   # only cells with a published student can be shipped
            recs[f.name] = json.loads(f.read_text(encoding="utf-8"))
            students[id(recs[f.name])] = w
    out: dict[str, dict] = {}
    for r in longest_curves(recs).values():
        out.setdefault(r["tags"]["setting"], {})[r["tags"]["method"]] = (r, students[id(r)])
    return out


def ship_students(results: Path, dest: Path | None = None, settings: tuple[str, ...] | None = None) -> dict[str, dict]:
    """Copy the published seed-0 curve students of every main method from ``results`` to ``dest`` with a manifest,
    one setting at a time: ``settings`` (each must have all four; one line naming the first missing student
    otherwise) or, by default, every setting whose four curves have all finished (at least one must have).
    Nothing is written before that is checked. The manifest lists what this call shipped; a shipped student of a
    setting not shipped now is removed, so the manifest and the folder agree. Returns the manifest."""
    dest = Path(dest or cell.STUDENT_DIR)
    have = curve_students(results)

    def missing(s):
        return [m for m in MAIN_METHODS if m not in have.get(s, {})]

    hint = "run `danceopd reproduce --preset full --publish results/full` until the curves have finished"
    if settings:
        for s in settings:
            if s not in plan.TEACHERS:
                raise UserError(f"setting {s!r}: expected one of {', '.join(plan.TEACHERS)}")
            if missing(s):
                raise UserError(f"{results}: no published seed-0 curve student of {s}/{missing(s)[0]} ({hint})")
    else:
        settings = tuple(s for s in plan.TEACHERS if not missing(s))
        if not settings:
            first = next(f"{s}/{missing(s)[0]}" for s in plan.TEACHERS)
            raise UserError(f"{results}: no setting has all four seed-0 curve students (first missing: {first}; "
                            f"{hint})")
    found = {(s, m): have[s][m] for s in settings for m in MAIN_METHODS}
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for (s, m), (rec, w) in sorted(found.items()):
        name = f"{s}_{m}"
        target = dest / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            shutil.copyfile(w, tmp)
        out[name] = {"setting": s, "method": m, "seed": 0, "steps": rec.get("steps"), "lr": rec["tags"].get("lr"),
                     "sample_scale": rec["tags"].get("sample_scale"), "cell": rec["id"], "key": rec["key"],
                     "command": rec.get("command"), "git_sha": rec.get("git_sha"),
                     "device": rec.get("device", "cpu"), "machine": rec.get("machine"), "sha256": sha256(target),
                     "bytes": target.stat().st_size, "dtype": "float16",
                     "scores": {k: v for k, v in rec["scores"].items() if k != "items"},
                     "curve": [{"step": p["step"], "scores": p["scores"]} for p in rec["curve"]]}
    write_json_atomic(dest / "manifest.json", out)
    for old in dest.glob("*.safetensors"):
        if old.stem not in out:
            old.unlink()
    return out
