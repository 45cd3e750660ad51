"""``danceopd reproduce``: the comparison table, both Table-2 blocks, ablations, curves and sample grids in
ShapesWorld, as one resumable command that writes report.md and report.html."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import UserError
from . import app


@app.command("reproduce")
def reproduce_cmd(
    preset: str = typer.Option("quick", "--preset", help="quick (comparison table, setting A, ~10 min) | full."),
    out: Path = typer.Option(None, "--out", help="Output folder (default runs/<preset>)."),
    seed: int = typer.Option(0, "--seed", help="Base random seed."),
    force: list[str] = typer.Option([], "--force", help="Redo one cell by id, e.g. A/danceopd/s0 (repeatable)."),
    retrain_teachers: bool = typer.Option(False, "--retrain-teachers",
                                          help="Train the teachers from their configs instead of the shipped ones."),
):
    """Run (or resume) every cell of a preset and write the report. Finished cells are reused."""
    from ..report.plan import full_plan_stage1, full_plan_stage2, quick_plan
    from ..report.report import write_report
    from ..report.runner import run_plan, train_teachers

    if preset not in ("quick", "full"):
        raise UserError(f"--preset must be quick or full, got {preset!r}")
    out = out or Path("runs") / preset
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher_map = train_teachers(out) if retrain_teachers else {}
    cells = quick_plan(seed) if preset == "quick" else full_plan_stage1(seed)
    for c in cells:
        if c.kind == "teacher" and c.model in teacher_map:
            c.model = teacher_map[c.model]
    recs = run_plan(cells, out, teacher_map, force)
    if preset == "full":
        scores = {k: v["scores"] for k, v in recs.items()}
        recs.update(run_plan(full_plan_stage2(scores), out, teacher_map, force))
    cmd = f"danceopd reproduce --preset {preset} --out {out} --seed {seed}" + (
        " --retrain-teachers" if retrain_teachers else "")
    path = write_report(recs, out, f"DanceOPD in ShapesWorld — {preset} preset", cmd)
    typer.echo(f"report: {path} and {out / 'report.html'} ({(time.time() - t0) / 60:.1f} min this run)")
