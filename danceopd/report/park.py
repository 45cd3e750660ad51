"""Parked cells: an unfinished cell's newest checkpoint kept in the publish folder, so a new machine resumes it.

A full-preset cell can take hours on 2 cores, longer than what is left of a working session, and the machine
that ran it may be gone by the next one. ``park`` copies, for each unfinished cell of the plan, what resuming
needs (the newest verified checkpoint: weights, optimizer, scheduler and RNG states; the run config; the metrics
log; the record with the curve points scored so far) to ``<publish>/parked/<cell folder>/``. ``unpark`` puts it
back into a run folder that has nothing of that cell, and the cell continues where it stopped: resume is exact
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
        if ckpt is None:
            continue
        target = parked_dir(cell, dest)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "run" / "checkpoints").mkdir(parents=True)
        shutil.copytree(ckpt, tmp / "run" / "checkpoints" / ckpt.name)
        for f in _RUN_FILES:
            if (d / "run" / f).is_file():
                shutil.copyfile(d / "run" / f, tmp / "run" / f)
        rec = rec or {}
        rec.update(id=cell.id, key=cell.key(), status="parked", parked_step=int(ckpt.name.split("-")[-1]))
        (tmp / "cell.json").write_text(json.dumps(rec, indent=1, sort_keys=True))
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        out.append((cell, rec["parked_step"]))
    return out


def unpark(cell: Cell, cell_dir: Path, dest: Path | None) -> dict | None:
    """Restore the parked state of ``cell`` into ``cell_dir`` (which must hold no run of it yet); returns the
    parked record (curve points so far) or None when there is none under this cell's key."""
    if dest is None or (cell_dir / "run").exists() or (cell_dir / "cell.json").exists():
        return None
    src = parked_dir(cell, dest)
    rec = json.loads((src / "cell.json").read_text()) if (src / "cell.json").is_file() else None
    if rec is None or rec.get("key") != cell.key() or latest_good(src / "run") is None:
        return None
    cell_dir.mkdir(parents=True, exist_ok=True)
    tmp = cell_dir / "run.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src / "run", tmp)
    os.replace(tmp, cell_dir / "run")
    rec.pop("status", None)
    rec["unparked_from"] = str(src)
    return rec


def drop_parked(cell: Cell, dest: Path) -> Path | None:
    """Delete the parked folder of a cell that has finished; returns its path (for the commit) if there was one."""
    p = parked_dir(cell, dest)
    if not p.exists():
        return None
    shutil.rmtree(p)
    return p
