"""Run a plan of cells with caching and resume: a finished cell (same key) is reused, an interrupted one is
continued (distillation resumes from its latest good checkpoint, curve points already measured are kept)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

from ..errors import UserError
from ..train.checkpoint import write_json_atomic
from .plan import CONFIG_DIR, Cell


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def machine() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, {platform.system()}".strip()


def evaluate_model(model: str, suite: str, n: int | None, seed: int, out: Path | None = None) -> dict:
    """Scores of one model with the evaluation suite (see ``danceopd.eval``)."""
    from ..eval.generators import resolve_generator
    from ..eval.suite import evaluate

    gen = resolve_generator(model, 32)
    kw = {} if n is None else {"n": n}
    return evaluate(gen, suite=suite, seed=seed, **kw)


def cell_command(cell: Cell, run_dir: Path) -> str:
    if cell.kind == "teacher":
        n = f" --n {cell.eval_n}" if cell.eval_n else ""
        return f"danceopd eval --model {cell.model} --suite {cell.suite}{n} --seed {cell.seed}"
    sets = " ".join(f"--set {o}" for o in cell.overrides)
    verb = "distill" if cell.kind == "distill" else "train"
    return f"danceopd {verb} --config configs/world/{cell.config} {sets} --out {run_dir}"


def run_cell(cell: Cell, root: Path, teacher_map: dict[str, str], force: bool = False, log=print) -> dict:
    """Run (or reuse) one cell; returns its record (``cell.json``)."""
    d = root / "cells" / cell.dirname
    rec_path = d / "cell.json"
    if force and d.exists():
        import shutil

        shutil.rmtree(d)
    done = _read_done(cell, root)
    if done:
        return done
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
    d.mkdir(parents=True, exist_ok=True)
    rec = rec or {"id": cell.id, "key": cell.key(), "kind": cell.kind, "tags": cell.tags, "curve": [],
                  "git_sha": git_sha(), "machine": machine(), "wall_time_s": 0.0}
    t0 = time.time()
    wall0 = rec.get("wall_time_s", 0.0)
    run_dir = d / "run"
    rec["command"] = cell_command(cell, run_dir)
    if cell.kind == "teacher":
        model = teacher_map.get(cell.model, cell.model)
        rec["model"] = model
        rec["scores"] = evaluate_model(model, cell.suite, cell.eval_n, cell.seed)
    else:
        from ..config import load_config
        from ..train.distill import DistillConfig, train_distill

        overrides = list(cell.overrides)
        cfg = load_config(DistillConfig, CONFIG_DIR / cell.config, overrides)
        for r in cfg.routes:
            r.teacher = teacher_map.get(r.teacher, r.teacher)
        if cfg.student.init in teacher_map:
            cfg.student.init = teacher_map[cfg.student.init]
        final_steps = cfg.train.steps
        done_points = {p["step"] for p in rec["curve"]}
        for s in [*(c for c in cell.curve if c < final_steps), final_steps]:
            cfg.train.steps = s
            train_distill(cfg, run_dir, resume=True)
            if s in cell.curve and s not in done_points:
                sc = evaluate_model(str(run_dir), cell.suite, cell.curve_n, cell.seed)
                rec["curve"].append({"step": s, "scores": sc})
                rec["wall_time_s"] = wall0 + time.time() - t0
                write_json_atomic(rec_path, rec)
        final = json.loads((run_dir / "final.json").read_text())
        rec["steps"] = final.get("steps", final_steps)  # 0 for weight_merge (no training)
        rec["sec_per_step"] = final.get("sec_per_step")
        rec["train_wall_time_s"] = final.get("wall_time_s")
        rec["scores"] = evaluate_model(str(run_dir), cell.suite, cell.eval_n, cell.seed)
        rec["model"] = str(run_dir / "model.safetensors")
    rec["status"] = "done"
    rec["wall_time_s"] = wall0 + time.time() - t0
    write_json_atomic(rec_path, rec)
    return rec


def check_force(force, ids) -> None:
    """Every ``--force`` id must name a cell of the plan (checked before any work starts)."""
    for f in force:
        if f not in ids:
            raise UserError(f"--force {f!r}: no such cell; cells: {', '.join(sorted(ids))}")


def run_plan(cells: list[Cell], root: Path, teacher_map: dict[str, str] | None = None, force: list[str] = (),
             log=print, check: bool = True) -> dict[str, dict]:
    """Run (or reuse) every cell; ``force`` ids are redone. ``check=False`` skips the ``--force`` check (the
    caller checked the ids against all stages; a stage redoes only its own forced cells)."""
    if check:
        check_force(force, {c.id for c in cells})
    out = {}
    from tqdm import tqdm

    bar = tqdm(cells, desc="reproduce", unit="cell")
    for c in bar:
        bar.set_postfix_str(c.id)
        out[c.id] = run_cell(c, root, teacher_map or {}, force=c.id in force, log=log)
    bar.close()
    return out


def load_done(cells: list[Cell], root: Path) -> dict[str, dict]:
    """Records of the cells of ``cells`` that have finished under ``root`` (nothing is run)."""
    return {c.id: rec for c in cells if (rec := _read_done(c, root))}


def _read_done(cell: Cell, root: Path) -> dict | None:
    """The record of ``cell`` if it has finished under ``root``, else None."""
    p = root / "cells" / cell.dirname / "cell.json"
    rec = json.loads(p.read_text()) if p.exists() else None
    if not rec or rec.get("status") != "done":
        return None
    rec["tags"] = cell.tags  # labels are not part of the key: the plan's current labels win
    return rec


def publish(root: Path, dest: Path) -> None:
    """Copy the report (md, html, figures) and every finished cell's record (scores, command, SHA, wall time; no
    weights) from ``root`` to ``dest``; files are replaced one by one atomically, nothing else in ``dest`` is
    touched."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    items = [(root / "report.md", dest / "report.md"), (root / "report.html", dest / "report.html")]
    items += [(f, dest / "figures" / f.name) for f in sorted((root / "figures").glob("*.png"))]
    items += [(f, dest / "cells" / f"{f.parent.name}.json") for f in sorted((root / "cells").glob("*/cell.json"))]
    for src, dst in items:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)


def train_teachers(root: Path, names=("t2i", "edit", "local_edit", "global_edit")) -> dict[str, str]:
    """Retrain the teachers with their shipped configs (resumable); returns {world:<name>: run folder}."""
    from ..config import load_config
    from ..train.sft import SFTConfig, train_sft

    mapping: dict[str, str] = {}
    for n in names:
        run = root / "teachers" / n
        over = []
        if n != "t2i" and "world:t2i" in mapping:
            over.append(f"init={mapping['world:t2i']}")
        cfg = load_config(SFTConfig, CONFIG_DIR / f"{n}.yaml", over)
        if not (run / "model.safetensors").exists():
            train_sft(cfg, run, resume=True)
        mapping[f"world:{n}"] = str(run)
    return mapping
