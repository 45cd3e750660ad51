"""Parked cells: an unfinished cell's newest checkpoint kept in the publish folder, so a new machine resumes it.

A full-preset cell can take hours on 2 cores, longer than what is left of a working session, and the machine
that ran it may be gone by the next one. ``park`` copies, for each unfinished cell of the plan, what resuming
needs (the newest verified checkpoint: weights, optimizer, scheduler and RNG states; the run config; the metrics
log; the record with the curve points scored so far) to ``<publish>/parked/<cell folder>/``. ``unpark`` puts it
back into a run folder that has nothing of that cell or only an older checkpoint of it (a machine whose run was
stopped before the cell went on elsewhere), and the cell continues where it stopped: resume is exact
(tests/report/test_report_park.py), so the student it reaches is the one an uninterrupted run trains. A parked
folder is used only under its cell's key (a changed computation never resumes stale state) and is deleted once
the cell is published as finished. One parked checkpoint of a world student is ~11 MB (fp32 weights + Adam).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..train.checkpoint import latest_good
from .cell import Cell

PARKED = "parked"
_RUN_FILES = ("run_config.json", "metrics.jsonl")


def parked_dir(cell: Cell, dest: Path) -> Path:
    return Path(dest) / PARKED / cell.dirname


def park(cells: list[Cell], root: Path, dest: Path) -> list[tuple[Cell, int]]:
    """Park every cell of ``cells`` that is unfinished under ``root`` and has a verified checkpoint; returns
    (cell, checkpoint step) per parked cell. A cell's previous parked folder is replaced whole (atomically)."""
    out = []
    for cell in cells:
        d = Path(root) / "cells" / cell.dirname
        rec = json.loads((d / "cell.json").read_text()) if (d / "cell.json").is_file() else None
        if rec is not None and rec.get("status") == "done":
            continue
        ckpt = latest_good(d / "run")
        target = parked_dir(cell, dest)
        if ckpt is None or _step(ckpt) <= parked_step(cell, dest):   # never replace a parked state by an older one
            continue
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "run" / "checkpoints").mkdir(parents=True)
        shutil.copytree(ckpt, tmp / "run" / "checkpoints" / ckpt.name)
        for f in _RUN_FILES:
            if (d / "run" / f).is_file():
                shutil.copyfile(d / "run" / f, tmp / "run" / f)
        if rec is None and (target / "cell.json").is_file():   # resumed from a parked state, no point scored since
            rec = json.loads((target / "cell.json").read_text())
        rec = rec or {}
        rec.update(id=cell.id, key=cell.key(), status="parked", parked_step=_step(ckpt))
        (tmp / "cell.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        out.append((cell, rec["parked_step"]))
    return out


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[-1])


def parked_step(cell: Cell, dest: Path | None) -> int:
    """The step of ``cell``'s parked checkpoint under its current key; -1 when there is none."""
    src = parked_dir(cell, dest) if dest is not None else None
    if src is None or not (src / "cell.json").is_file():
        return -1
    rec = json.loads((src / "cell.json").read_text())
    ckpt = latest_good(src / "run") if rec.get("key") == cell.key() else None
    return -1 if ckpt is None else _step(ckpt)


def unpark(cell: Cell, cell_dir: Path, dest: Path | None) -> dict | None:
    """Restore the parked state of ``cell`` into ``cell_dir`` when it is ahead of what ``cell_dir`` holds (no run,
    or a run whose newest checkpoint is older: that run is replaced, since the parked one is the same run further
    on); returns the parked record (curve points so far) or None when nothing parked is ahead."""
    step = parked_step(cell, dest)
    if step < 0:
        return None
    local = latest_good(cell_dir / "run") if (cell_dir / "run").exists() else None
    if (cell_dir / "run").exists() and (local is None or _step(local) >= step):
        return None
    src = parked_dir(cell, dest)
    rec = json.loads((src / "cell.json").read_text())
    cell_dir.mkdir(parents=True, exist_ok=True)
    tmp = cell_dir / "run.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src / "run", tmp)
    if local is not None:   # the older local run goes only once the parked copy is complete
        shutil.rmtree(cell_dir / "run")
    os.replace(tmp, cell_dir / "run")
    rec.pop("status", None)
    rec["unparked_from"] = str(src)
    if local is not None:
        rec["replaced_local_step"] = _step(local)
    return rec


def drop_parked(cell: Cell, dest: Path) -> Path | None:
    """Delete the parked folder of a cell that has finished; returns its path (for the commit) if there was one."""
    p = parked_dir(cell, dest)
    if not p.exists():
        return None
    shutil.rmtree(p)
    return p
