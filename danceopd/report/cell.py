"""A cell of a reproduction: one teacher evaluation, teacher training or distillation run.

A cell is identified by a readable ``id`` and keyed by everything that determines its result (config file
contents after includes and overrides, evaluation settings, seed, the shipped weights it uses); a changed config
is a new cell, so finished results are reused and never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "world"
# tags of the cells outside the main comparison (its rows and figures): ablations, the lr / scale grid, the live
# demo, curve continuations
SIDE_TAGS = frozenset({"ablation", "grid", "live", "extend"})
# Bumped whenever code changes what a cell computes (beyond float tolerance) without changing its config, so that
# no stale result is reused. 2: the preservation score, row-parallel CPU forwards.
COMPUTE_VERSION = 2


@dataclass
class Cell:
    id: str
    kind: str                         # "teacher" (evaluate a model) | "distill" | "sft" (train a teacher)
    model: str | None = None          # teacher cells: model spec
    config: str | None = None         # distill / sft cells: config file name under configs/world
    overrides: list[str] = field(default_factory=list)
    suite: str = "all"
    eval_n: int | None = None         # None = the suite's default
    seed: int = 0
    curve: list[int] = field(default_factory=list)   # training steps at which to evaluate (curves)
    curve_n: int | None = None
    eval_seed: int | None = None      # seed of the final evaluation (None = ``seed``)
    sample_scales: list[float] = field(default_factory=list)  # grid cells: also evaluate at these sampling scales
    curve_test: bool = False          # curve cells: also score every curve point on the test seed (the budget's
                                      # seed-``seed`` result is then read off the curve, see ``budget``)
    resume_from: str | None = None    # curve extensions: the folder name (``dirname``) of the finished cell whose
                                      # run this one continues (its checkpoints are copied when present)
    tags: dict = field(default_factory=dict)
    teacher_runs: dict = field(default_factory=dict)  # --retrain-teachers: {world:<name>: run folder}

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("tags")
        if not d["teacher_runs"]:  # shipped teachers: identified by their sha256 below
            d.pop("teacher_runs")
        for late in ("curve_test", "resume_from"):   # fields added later enter the key only when set (older
            if not d[late]:                          # keys stay valid)
                d.pop(late)
        if self.config:
            import yaml

            from ..config import _resolve_includes  # the config as loaded, includes merged

            path = CONFIG_DIR / self.config
            d["config_content"] = _resolve_includes(yaml.safe_load(path.read_text(encoding="utf-8")), path, 0)
        d["version"] = __version__
        d["compute"] = COMPUTE_VERSION
        d["teachers"] = _shipped_shas(json.dumps(d, default=str))
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return dirname(self.id, self.key())


def dirname(cell_id: str, key: str) -> str:
    """The folder name of a cell (``<out>/cells/<dirname>``) from its id and key (as a finished record holds them)."""
    return cell_id.replace("/", "__").replace("=", "-") + "--" + key


def _shipped_shas(text: str) -> dict[str, str | None]:
    """sha256 (from the manifest) of every shipped ``world:<name>`` model a cell mentions, so a re-shipped teacher
    makes every cell that depends on it a new cell."""
    import re

    from ..backends.registry import ASSET_DIR

    path = ASSET_DIR / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    names = sorted(set(re.findall(r"world:([A-Za-z0-9_]+)", text)))
    out = {n: manifest.get(n, {}).get("sha256") for n in names}
    students = sorted(set(re.findall(r"shipped:([A-Za-z0-9_]+)", text)))
    if students:   # shipped converged students (report/ship.py)
        sm = student_manifest()
        out.update({f"shipped:{n}": sm.get(n, {}).get("sha256") for n in students})
    return out


# The converged students shipped with the package (written by report/ship.py, read by the quick preset; every
# command that takes --model loads them as shipped:<name>, backends/world_specs.STUDENT_DIR: the same folder, not
# imported so that planning cells loads no torch).
STUDENT_DIR = Path(__file__).resolve().parents[1] / "assets" / "students"


def student_manifest(folder: Path | None = None) -> dict[str, dict]:
    """{name: entry} of the shipped students in ``folder`` (default STUDENT_DIR; {} when none are shipped)."""
    p = Path(folder or STUDENT_DIR) / "manifest.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def own_train_wall_s(rec: dict, base: dict | None = None) -> float:
    """Training seconds a cell's record ``rec`` spent itself: its training clock (carried across interruptions by
    its checkpoints) less what it took over from ``base``, the cell a curve extension continues."""
    inherited = rec.get("continued_train_wall_s", (base or {}).get("train_wall_time_s") or 0.0)
    return (rec.get("train_wall_time_s") or 0.0) - inherited
