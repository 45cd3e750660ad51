"""The cell keys of already published results do not move: a refactor that changed the resolved configs, the
package version or the compute version would orphan every cell the full preset has committed to
``results/full/cells/`` (a fresh clone could no longer adopt them)."""

from __future__ import annotations

import json
from pathlib import Path

from danceopd.report.plan import grid_cells, teacher_cells

CELLS = Path(__file__).resolve().parents[2] / "results" / "full" / "cells"

# published before issue 20's refactor (teachers scored, the first two grid points of setting A's DanceOPD)
PINNED = [
    "teacher__t2i--b8efeaec62da", "teacher__edit--57552c9f7bc5", "teacher__local_edit--51f8cb322800",
    "teacher__global_edit--c98ed9e27fc9", "A__danceopd__s0__grid-lr,value-0.0001--83d05686bd90",
    "A__danceopd__s0__grid-lr,value-0.0002--491e99a2f74f",
]


def test_published_cells_keep_their_keys():
    planned = {c.dirname: c for c in teacher_cells() + grid_cells(0)}
    for name in PINNED:
        assert name in planned, f"{name}: the plan now gives this cell another key"
        rec = json.loads((CELLS / f"{name}.json").read_text(encoding="utf-8"))
        assert rec["key"] == planned[name].key() and rec["id"] == planned[name].id
