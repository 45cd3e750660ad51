"""Publishing finished cells: each record (and the fp16 student of a cell the report draws) copied to a publish folder
(``results/full``) as it finishes, committed at once with ``--commit``, and taken over (adopted) by a later run,
on any machine, instead of being run again."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..util.atomic import atomic_path, write_json_atomic
from .cell import SIDE_TAGS, Cell
from .park import drop_parked, park, parked_dir


def read_done(cell: Cell, root: Path) -> dict | None:
    """The record of ``cell`` if it has finished under ``root``, else None."""
    p = root / "cells" / cell.dirname / "cell.json"
    rec = json.loads(p.read_text()) if p.exists() else None
    if not rec or rec.get("status") != "done":
        return None
    rec["tags"] = cell.tags  # labels are not part of the key: the plan's current labels win
    return rec


def published_paths(cell: Cell, dest: Path) -> tuple[Path, Path]:
    """(record, fp16 student weights) of ``cell`` under a publish folder."""
    return dest / "cells" / f"{cell.dirname}.json", dest / "students" / f"{cell.dirname}.safetensors"


def publish_cell(cell: Cell, rec: dict, dest: Path, weights: bool) -> list[Path]:
    """Copy a finished cell's record (and, with ``weights``, its student in fp16) to ``dest``; returns the paths
    written. Each file is replaced atomically."""
    rec_dst, w_dst = published_paths(cell, dest)
    out = [rec_dst]
    rec_dst.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rec_dst, rec)
    src = Path(rec.get("model") or "")
    if weights and cell.kind == "distill" and src.is_file():
        import torch

        from ..backends.registry import load_backend
        from ..backends.world import save_world_model

        be = load_backend(str(src))
        w_dst.parent.mkdir(parents=True, exist_ok=True)
        save_world_model(be.net, be.tokenizer, w_dst, be.sampling, dtype=torch.float16,
                         meta={"cell": cell.id, "key": cell.key(), "source": "fp16 copy of the cell's student"})
        out.append(w_dst)
    return out


def report_draws(cell: Cell) -> bool:
    """Whether the report needs ``cell``'s student itself, not only its scores: cells with curves (the shipped
    students come from them) and every seed-0 main cell (the dense baselines at DanceOPD's wall time, weight merge:
    rows of the sample figures; not those at matched samples, which the figures do not draw). Without its weights a
    fresh clone's report would drop the row from the figure."""
    extra = (SIDE_TAGS | {"matched"}) & set(cell.tags)
    return cell.kind == "distill" and (bool(cell.curve) or (cell.seed == 0 and not extra))


def adopt_published(cell: Cell, root: Path, dest: Path) -> dict | None:
    """A published finished record of ``cell`` (same key), copied into ``root`` so the run reuses it; its student
    (when published) becomes the cell's model. None when ``dest`` has no such record."""
    rec_src, w_src = published_paths(cell, dest)
    if not rec_src.is_file():
        return None
    rec = json.loads(rec_src.read_text())
    if rec.get("status") != "done" or rec.get("key") != cell.key():
        return None
    d = root / "cells" / cell.dirname
    if w_src.is_file():
        with atomic_path(d / "run" / "model.safetensors") as tmp:
            shutil.copyfile(w_src, tmp)
        rec["model"] = str(d / "run" / "model.safetensors")
    elif cell.kind == "distill":
        rec["model"] = None          # scores only: the student itself was not published
    rec["adopted_from"] = str(rec_src)
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / "cell.json", rec)
    return read_done(cell, root)


def git_commit(paths: list[Path], message: str) -> None:
    """Commit exactly ``paths`` (nothing else staged is included); retried while another git holds the lock."""
    paths = [Path(p).resolve() for p in paths]
    repo = paths[0].parent   # git runs in the repository that holds the published files
    for attempt in range(20):
        add = subprocess.run(["git", "add", "--", *map(str, paths)], capture_output=True, text=True, cwd=repo)
        if add.returncode == 0:
            res = subprocess.run(["git", "commit", "-q", "-m", message, "--", *map(str, paths)],
                                 capture_output=True, text=True, cwd=repo)
            if res.returncode == 0 or "nothing to commit" in res.stdout + res.stderr:
                return
            err = res.stderr
        else:
            err = add.stderr
        if "index.lock" not in err:
            raise UserError(f"git commit of {paths[0]} failed: {err.strip()[:200]}")
        time.sleep(1 + attempt)
    raise UserError(f"git commit of {paths[0]} failed: the git index stayed locked")


@dataclass
class Publisher:
    """Where finished cells go as they finish: ``dest`` (e.g. results/full) gets each record, and the fp16 student
    of the cells the report draws (``report_draws``); ``commit`` commits those files at once, so a lost machine
    costs at most the cells that were running."""

    dest: Path
    commit: bool = False

    def __call__(self, cell: Cell, rec: dict) -> None:
        paths = publish_cell(cell, rec, self.dest, weights=report_draws(cell))
        parked = parked_dir(cell, self.dest)
        tracked = self.commit and parked.exists() and _tracked(parked)
        if drop_parked(cell, self.dest) and tracked:   # finished: its parked checkpoint goes in the same commit
            paths.append(parked)
        if self.commit:
            git_commit(paths, f"results: cell {cell.id} ({cell.key()})")

    def park(self, cells: list[Cell], root: Path) -> list[tuple[Cell, int]]:
        """Park the unfinished cells of ``cells`` (see ``park.py``); with ``commit``, one commit of them all."""
        parked = park(cells, root, self.dest)
        if parked and self.commit:
            git_commit([parked_dir(c, self.dest) for c, _ in parked],
                       "results: park " + ", ".join(f"{c.id} at step {s}" for c, s in parked))
        return parked


def _tracked(path: Path) -> bool:
    res = subprocess.run(["git", "ls-files", "--", str(path.resolve())], capture_output=True, text=True,
                         cwd=path.resolve().parent)
    return res.returncode == 0 and bool(res.stdout.strip())


def publish(root: Path, dest: Path) -> None:
    """Copy the report (md, html, figures) and every finished cell's record (scores, command, SHA, wall time; no
    weights) from ``root`` to ``dest``, except records adopted from ``dest`` itself (they are there already, with
    their own model path); files are replaced one by one atomically, nothing else in ``dest`` is touched."""
    dest.mkdir(parents=True, exist_ok=True)
    items = [(root / "report.md", dest / "report.md"), (root / "report.html", dest / "report.html")]
    items += [(f, dest / "figures" / f.name) for f in sorted((root / "figures").glob("*.png"))]
    for f in sorted((root / "cells").glob("*/cell.json")):
        dst = dest / "cells" / f"{f.parent.name}.json"
        rec = json.loads(f.read_text(encoding="utf-8"))
        adopted = rec.get("adopted_from")
        if rec.get("status") == "done" and not (adopted and dst.is_file()
                                                and Path(adopted).resolve() == dst.resolve()):
            items.append((f, dst))   # not a running cell's; a record adopted from this very file stays as it is
    for src, dst in items:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
