"""Run a plan of cells with caching and resume: a finished cell (same key) is reused, an interrupted one is
continued (distillation resumes from its latest good checkpoint, curve points already measured are kept)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
import traceback
from pathlib import Path

from ..errors import UserError
from ..train.checkpoint import newest_step
from ..util.atomic import atomic_path, write_json_atomic
from . import ship
from .cell import CONFIG_DIR, Cell, own_train_wall_s
from .park import unpark
from .pool import PriorityPool
from .publish import Publisher, adopt_published, read_done


def git_sha() -> str:
    """The checkout's short commit; ``DANCEOPD_GIT_SHA`` names it where the tree travels without ``.git`` (a lent
    GPU machine, ``scripts/gpu_full_preset.sh``)."""
    if os.environ.get("DANCEOPD_GIT_SHA"):
        return os.environ["DANCEOPD_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, {platform.system()}".strip()


def device() -> str:
    """Where cells run: ``cuda`` when a GPU is visible (``reproduce --device cpu`` hides it), else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    """What the cell ran on, for its record: ``cpu``, or ``cuda (<GPU name>)``."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(0)})" if device() == "cuda" else "cpu"


def evaluate_model(model: str, suite: str, n: int | None, seed: int, out: Path | None = None, **sample_kw) -> dict:
    """Scores of one model with the evaluation suite (see ``danceopd.eval``); ``sample_kw`` overrides the model's
    sampler (e.g. ``text_scale=``)."""
    from ..eval.generators import resolve_generator
    from ..eval.suite import evaluate

    gen = resolve_generator(model, 32, device=device(), **sample_kw)
    kw = {} if n is None else {"n": n}
    return evaluate(gen, suite=suite, seed=seed, **kw)


def cell_command(cell: Cell, run_dir: Path) -> str:
    if cell.kind == "teacher":
        n = f" --n {cell.eval_n}" if cell.eval_n else ""
        return f"danceopd eval --model {cell.model} --suite {cell.suite}{n} --seed {cell.seed}"
    sets = " ".join(f"--set {o}" for o in cell.overrides)
    verb = "distill" if cell.kind == "distill" else "train"
    return f"danceopd {verb} --config configs/world/{cell.config} {sets} --out {run_dir}"


def run_cell(cell: Cell, root: Path, teacher_map: dict[str, str], force: bool = False, log=print,
             published: Path | None = None, progress: bool = True) -> dict:
    """Run (or reuse) one cell; returns its record (``cell.json``). ``published``: a folder of published cells
    (``results/full``): a finished cell found there is taken over instead of being run again."""
    d = root / "cells" / cell.dirname
    rec_path = d / "cell.json"
    if force and d.exists():
        shutil.rmtree(d)
    done = read_done(cell, root) or (None if force or published is None else adopt_published(cell, root, published))
    if done:
        return done
    fresh = {"id": cell.id, "key": cell.key(), "kind": cell.kind, "tags": cell.tags, "curve": [],
             "git_sha": git_sha(), "machine": machine(), "device": device_name(), "wall_time_s": 0.0}
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
    if not force and (parked := unpark(cell, d, published)):
        older = f"; this machine's run, at step {parked['replaced_local_step']}, replaced" \
            if "replaced_local_step" in parked else ""
        log(f"{cell.id}: resuming from its parked checkpoint (step {parked['parked_step']}, "
            f"{parked['unparked_from']}){older}")
        rec = {**fresh, **parked}          # a cell parked before its first record (no curve) parked only its id
    d.mkdir(parents=True, exist_ok=True)
    rec = rec or fresh
    write_json_atomic(rec_path, rec)       # at once: parking before the next curve point keeps the record
    here = device_name()
    if not rec.get("device", here).endswith(here):   # resumed elsewhere (a cell parked on a GPU, finished on a CPU)
        rec["device"] = f"{rec.get('device', 'cpu')}, then {here}"
    t0 = time.time()
    wall0 = rec.get("wall_time_s", 0.0)
    run_dir = d / "run"
    rec["command"] = cell_command(cell, run_dir)
    eval_seed = cell.seed if cell.eval_seed is None else cell.eval_seed
    if cell.kind == "teacher":
        model = teacher_map.get(cell.model, cell.model)
        if model.startswith(ship.PREFIX):   # a shipped converged student: its training steps come with it
            rec["steps"] = ship.manifest().get(model[len(ship.PREFIX):], {}).get("steps")
            model = str(ship.student_path(model))
        rec["model"] = model
        rec["scores"] = _timed(rec, evaluate_model, model, cell.suite, cell.eval_n, eval_seed)
    else:
        from ..config import load_config
        from ..train.distill import DistillConfig, train_distill
        from .plan import VAL_SEED

        overrides = list(cell.overrides)
        cfg = load_config(DistillConfig, CONFIG_DIR / cell.config, overrides)
        for r in cfg.routes:
            r.teacher = teacher_map.get(r.teacher, r.teacher)
        if cfg.student.init in teacher_map:
            cfg.student.init = teacher_map[cfg.student.init]
        final_steps = cfg.train.steps
        if cell.resume_from and not rec["curve"]:
            _continue_from(root / "cells" / cell.resume_from, run_dir, rec, log)
            write_json_atomic(rec_path, rec)
        done_points = {p["step"] for p in rec["curve"]}
        at = newest_step(run_dir)   # > 0: resumed (this machine's run, a parked or a continued one)
        for s in [*(c for c in cell.curve if c < final_steps), final_steps]:
            if s < at:              # trained past already: its point is in the record, or can no longer be taken
                if s in cell.curve and s not in done_points:
                    log(f"{cell.id}: curve point {s} skipped: the run resumed at step {at}, past it, and its record "
                        f"has no such point")
                continue
            cfg.train.steps = s
            train_distill(cfg, run_dir, resume=True, progress=progress)
            if s in cell.curve and s not in done_points:   # curves are validation: scored on VAL_SEED
                sc = _timed(rec, evaluate_model, str(run_dir), cell.suite, cell.curve_n, VAL_SEED)
                sc.pop("items", None)   # per-item scores are kept for final (test) evaluations only
                point = {"step": s, "scores": sc, "wall_time_s": _train_wall(run_dir)}
                if cell.curve_test:     # the test-seed result a run stopped here would report
                    point["test"] = _timed(rec, evaluate_model, str(run_dir), cell.suite, cell.eval_n, eval_seed)
                    # the student at this step, kept locally (the final one is published)
                    with atomic_path(d / "snapshots" / f"step_{s}.safetensors") as tmp:
                        shutil.copyfile(run_dir / "model.safetensors", tmp)
                rec["curve"].append(point)
                rec["wall_time_s"] = wall0 + time.time() - t0
                write_json_atomic(rec_path, rec)
        final = json.loads((run_dir / "final.json").read_text())
        rec["steps"] = final.get("steps", final_steps)  # 0 for weight_merge (no training)
        rec["sec_per_step"] = final.get("sec_per_step")
        rec["train_wall_time_s"] = final.get("wall_time_s")
        last = next((p for p in rec["curve"] if p["step"] == final_steps and "test" in p), None)
        rec["scores"] = last["test"] if last else _timed(rec, evaluate_model, str(run_dir), cell.suite, cell.eval_n,
                                                         eval_seed)
        if cell.sample_scales:   # grid cells: the same student sampled with each guidance scale
            from ..backends.registry import load_backend

            own = f"{load_backend(str(run_dir)).sampling.text_scale:g}"   # already scored above
            rec["by_scale"] = {f"{x:g}": rec["scores"] if f"{x:g}" == own else
                               _timed(rec, evaluate_model, str(run_dir), cell.suite, cell.eval_n, eval_seed,
                                      text_scale=x)
                               for x in cell.sample_scales}
        rec["model"] = str(run_dir / "model.safetensors")
    rec["status"] = "done"
    # This run's clock misses the runs before an interruption (a hard kill writes nothing); the training clock in
    # the checkpoints and the evaluation clock in the record do not, so the cell's cost is at least their sum.
    rec["wall_time_s"] = max(wall0 + time.time() - t0, own_train_wall_s(rec) + rec.get("eval_wall_time_s", 0.0))
    write_json_atomic(rec_path, rec)
    return rec


def _timed(rec: dict, evaluate, *args, **kwargs) -> dict:
    """``evaluate(*args, **kwargs)``, its seconds added to ``rec["eval_wall_time_s"]`` (kept across resumes)."""
    t = time.time()
    scores = evaluate(*args, **kwargs)
    rec["eval_wall_time_s"] = rec.get("eval_wall_time_s", 0.0) + time.time() - t
    return scores


def _continue_from(base: Path, run_dir: Path, rec: dict, log) -> None:
    """A curve extension starts from the finished cell it continues (``Cell.resume_from``): that cell's curve
    points are taken over, and its checkpoints, when this machine has them, are copied so training resumes at its
    last step. Without them (a cell adopted from a publish folder: fp16 student only) the run trains from step 0:
    resume is exact, so it reaches the same student, only later."""
    base_rec = json.loads((base / "cell.json").read_text()) if (base / "cell.json").is_file() else {}
    if base_rec.get("status") != "done":
        raise RuntimeError(f"{base}: the cell this curve extension continues has not finished")
    rec["curve"] = [dict(p) for p in base_rec.get("curve") or []]
    rec["continues"] = base_rec["id"]
    if run_dir.exists():   # copied before an interruption: its own run folder resumes
        log(f"{rec['id']}: resuming its run folder (continued from {base_rec['id']})")
    elif (base / "run" / "checkpoints").is_dir():
        tmp = run_dir.with_name(run_dir.name + ".partial")   # copied whole, then renamed: never half a run
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base / "run", tmp)
        os.replace(tmp, run_dir)
        rec["continued_train_wall_s"] = base_rec.get("train_wall_time_s") or 0.0   # the base cell's cost, not ours
        log(f"{rec['id']}: continuing the run of {base_rec['id']} from its last checkpoint")
    else:
        log(f"{rec['id']}: no checkpoints of {base_rec['id']} on this machine: training from step 0")


def _train_wall(run_dir: Path) -> float | None:
    p = run_dir / "final.json"
    return json.loads(p.read_text()).get("wall_time_s") if p.exists() else None


# ---- published cells: records (and the weights the report needs) kept in the repository ------------------------
def check_force(force, ids) -> None:
    """Every ``--force`` id must name a cell of the plan (checked before any work starts)."""
    for f in force:
        if f not in ids:
            raise UserError(f"--force {f!r}: no such cell; cells: {', '.join(sorted(ids))}")


def _cell_job(cell: Cell, force: bool, root: Path, teacher_map: dict, published: Path | None,
              threads: int) -> dict:
    """One cell in a worker process of ``run_plan(jobs > 1)``."""
    import sys

    import torch

    torch.set_num_threads(threads)
    print(f"{time.strftime('%H:%M:%S')} {cell.id}: started", file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C / the time limit stops a running cell ...
    try:
        return run_cell(cell, root, teacher_map, force=force, published=published, progress=False)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _idle_worker_ignores_sigint() -> None:
    """... while an idle worker ignores it (else each one prints a KeyboardInterrupt traceback from its queue)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cell_pool(jobs: int, root: Path, teacher_map: dict[str, str], published: Path | None) -> PriorityPool:
    """``jobs`` worker processes that run cells (``run_cell``) for every caller, by priority (``pool.py``)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 2) // jobs)
    return PriorityPool(jobs, ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                                 initializer=_idle_worker_ignores_sigint), _cell_job,
                        (root, teacher_map, published, threads))


_PUBLISH_LOCK = threading.Lock()   # cells of two settings may finish at once: one publish (and git commit) at a time


def run_plan(cells: list[Cell], root: Path, teacher_map: dict[str, str] | None = None, force: list[str] = (),
             log=print, check: bool = True, publisher: Publisher | None = None, jobs: int = 1,
             pool: PriorityPool | None = None, priority: int = 0) -> dict[str, dict]:
    """Run (or reuse) every cell; ``force`` ids are redone. ``check=False`` skips the ``--force`` check (the
    caller checked the ids against all stages; a stage redoes only its own forced cells). ``publisher``: called
    with each newly finished cell (published cells under its folder are reused). ``jobs > 1``: that many cells at
    once in worker processes (each with cores / jobs torch threads; on a GPU all share it); ``pool``: the workers
    shared with other callers (threads), this batch queued there with ``priority`` (lower goes first)."""

    from concurrent.futures import as_completed

    from tqdm import tqdm

    if check:
        check_force(force, {c.id for c in cells})
    published = publisher.dest if publisher else None
    out: dict[str, dict] = {}
    bar = tqdm(total=len(cells), desc="reproduce", unit="cell")

    def finish(c: Cell, rec: dict, was_done: bool):
        out[c.id] = rec
        if publisher is not None and not was_done and "adopted_from" not in rec:
            with _PUBLISH_LOCK:
                publisher(c, rec)
        bar.update(1)

    todo = []
    ready = finished_cells([c for c in cells if c.id not in force], root, published)
    for c in cells:
        if c.id in ready:
            finish(c, ready[c.id], True)
        else:
            todo.append(c)
    if jobs <= 1 and pool is None:
        for c in todo:
            bar.set_postfix_str(c.id)
            finish(c, run_cell(c, root, teacher_map or {}, force=c.id in force, log=log, published=published), False)
    elif todo:
        own = pool is None
        pool = pool or cell_pool(jobs, root, teacher_map or {}, published)
        failed: list[BaseException] = []
        try:
            futs = {pool.submit(c, priority, c.id in force): c for c in todo}
            for f in as_completed(futs):
                c, when = futs[f], time.strftime('%H:%M:%S')
                if f.exception() is not None:   # said at once, with the worker's traceback; the others go on
                    err = f.exception()
                    if isinstance(err, KeyboardInterrupt):   # Ctrl-C or a time limit: no failure, no traceback
                        log(f"{when} {c.id}: interrupted")
                    else:
                        log(f"{when} {c.id}: FAILED\n" + "".join(traceback.format_exception(err)).rstrip())
                    failed.append(err)
                    continue
                rec = f.result()
                bar.set_postfix_str(c.id)
                log(f"{when} {c.id}: finished ({rec.get('wall_time_s', 0.0):.0f} s)")
                finish(c, rec, False)
        finally:
            if own:
                pool.close()
        if failed:   # the batch is incomplete: the stage after it must not be planned from it
            raise failed[0]
    bar.close()
    return {c.id: out[c.id] for c in cells}


def finished_cells(cells: list[Cell], root: Path, published: Path | None = None) -> dict[str, dict]:
    """Records of the cells of ``cells`` finished under ``root`` or published under ``published`` (adopted into
    ``root``, as ``run_plan`` does); nothing is run."""
    out = {}
    for c in cells:
        rec = read_done(c, root) or (adopt_published(c, root, published) if published is not None else None)
        if rec is not None:
            out[c.id] = rec
    return out


def load_done(cells: list[Cell], root: Path) -> dict[str, dict]:
    """Records of the cells of ``cells`` that have finished under ``root`` (nothing is run)."""
    return {c.id: rec for c in cells if (rec := read_done(c, root))}


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
