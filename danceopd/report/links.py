"""Readable names for the students of a reproduction: ``<out>/<setting>_<method>`` (seed 0; other seeds
``_s<seed>``) points at the cell's hashed run folder, so ``danceopd eval --model runs/quick/A_danceopd`` works."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_name(tags: dict) -> str | None:
    """``A_danceopd``, ``A_danceopd_s1``, ``A_flowopd_samples`` (a dense baseline at matched samples); None for
    teachers, ablation points and grid points. A curve and its longer continuation share a name."""
    if "ablation" in tags or "grid" in tags or "setting" not in tags or "method" not in tags:
        return None
    seed = tags.get("seed", 0)
    return (f"{tags['setting']}_{tags['method']}" + (f"_{tags['matched']}" if tags.get("matched") else "")
            + (f"_s{seed}" if seed else ""))


def link_runs(recs: dict[str, dict], out: Path) -> list[Path]:
    """Point ``out/<name>`` at ``cells/<dirname>/run`` for every finished main distillation cell (a relative
    symlink, replaced atomically; a copy of the exported model where symlinks are unavailable). Where two cells
    share a name (a curve and its continuation), the one trained longest gets it."""
    out = Path(out)
    made = {}
    for rec in sorted(recs.values(), key=lambda r: r.get("steps") or 0):
        name, model = link_name(rec.get("tags", {})), rec.get("model")
        if rec.get("kind") != "distill" or not name or not model or rec.get("status") != "done":
            continue
        dirname = Path(model).parent.parent.name  # <out>/cells/<dirname>/run/model.safetensors
        run = out / "cells" / dirname / "run"
        if not (run / "model.safetensors").is_file():
            continue
        dst = out / name
        tmp = out / f".{name}.tmp"
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        elif tmp.is_dir():
            shutil.rmtree(tmp)
        try:
            os.symlink(os.path.join("cells", dirname, "run"), tmp, target_is_directory=True)
        except OSError:  # no symlinks here: copy what generation and evaluation need
            tmp.mkdir()
            for f in ("model.safetensors", "final.json"):
                if (run / f).is_file():
                    shutil.copyfile(run / f, tmp / f)
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        made[name] = dst
    return list(made.values())
