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
    preset: str = typer.Option("quick", "--preset", help="quick (comparison table, setting A; ~3 min on 2 cores) | "
                               "full (everything; ~3.2 h on 2 cores, resumable)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default runs/<preset>)."),
    seed: int = typer.Option(0, "--seed", help="Base random seed."),
    force: list[str] = typer.Option([], "--force", help="Redo one cell by id, e.g. A/danceopd/s0 (repeatable)."),
    retrain_teachers: bool = typer.Option(False, "--retrain-teachers",
                                          help="Train the teachers from their configs instead of the shipped ones."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Run nothing: write the report from the cells finished so far."),
    publish_dir: Path = typer.Option(None, "--publish", help="Also copy the report, its figures and every finished "
                                     "cell's record (no weights) to this folder, e.g. results/full."),
):
    """Run (or resume) every cell of a preset and write the report. Finished cells are reused."""
    from ..report.plan import full_plan_stage1, full_plan_stage2, quick_plan, stage2_candidate_ids
    from ..report.links import link_runs
    from ..report.report import comparison_table, write_report
    from ..report.runner import check_force, load_done, publish, run_plan, train_teachers

    if preset not in ("quick", "full"):
        raise UserError(f"--preset must be quick or full, got {preset!r}")
    if report_only and (force or retrain_teachers):
        raise UserError("--report-only runs nothing: it cannot be combined with --force or --retrain-teachers")
    cells = quick_plan(seed) if preset == "quick" else full_plan_stage1(seed)
    check_force(force, {c.id for c in cells} | (stage2_candidate_ids() if preset == "full" else set()))
    out = out or Path("runs") / preset
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher_map = train_teachers(out) if retrain_teachers else {}
    for c in cells:
        c.teacher_runs = dict(teacher_map)  # retrained teachers are different cells from the shipped ones
        if c.kind == "teacher" and c.model in teacher_map:
            c.model = teacher_map[c.model]
    if report_only:
        def run(cs):
            return load_done(cs, out)
    else:
        def run(cs):  # the --force ids were checked above against both stages
            return run_plan(cs, out, teacher_map, force, check=False)
    recs = run(cells)
    planned = len(cells)
    if preset == "full":
        stage2 = full_plan_stage2({k: v["scores"] for k, v in recs.items()})
        for c in stage2:
            c.teacher_runs = dict(teacher_map)
        planned += len(stage2)
        recs.update(run(stage2))
    cmd = f"danceopd reproduce --preset {preset} --out {out} --seed {seed}" + (
        " --retrain-teachers" if retrain_teachers else "") + (f" --publish {publish_dir}" if publish_dir else "")
    path = write_report(recs, out, f"DanceOPD in ShapesWorld — {preset} preset", cmd, planned=planned)
    if publish_dir:
        publish(out, publish_dir)
    links = link_runs(recs, out)
    typer.echo("\n" + comparison_table(recs)[0].split("\n\n")[0] + "\n")
    if links:
        typer.echo(f"students: {', '.join(str(p) for p in links)} (e.g. danceopd eval --model {links[-1]} ...)")
    typer.echo(f"report: {path} and {out / 'report.html'} ({len(recs)} of {planned} cells finished; "
               f"{(time.time() - t0) / 60:.1f} min this run)")
