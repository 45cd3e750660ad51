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
    preset: str = typer.Option("quick", "--preset", help="quick (the comparison table in minutes on 2 cores: the "
                               "shipped converged students and the teachers evaluated here plus a short live "
                               "distillation; without shipped students, setting-A students trained 120 steps) | "
                               "full (the comparison at convergence: grid, curves, seeds; tens of hours on 2 "
                               "cores, resumable, --device cuda --jobs N on a GPU)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default runs/<preset>)."),
    seed: int = typer.Option(0, "--seed", help="Base random seed."),
    force: list[str] = typer.Option([], "--force", help="Redo one cell by id, e.g. A/danceopd/s0 (repeatable)."),
    retrain_teachers: bool = typer.Option(False, "--retrain-teachers",
                                          help="Train the teachers from their configs instead of the shipped ones."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Run nothing: write the report from the cells finished so far (with "
                                     "--publish: those published there too, and the report is published)."),
    publish_dir: Path = typer.Option(None, "--publish", help="Publish to this folder (e.g. results/full): each cell's "
                                     "record as it finishes (and the fp16 student of each cell the report draws), then the "
                                     "report; cells already published there are reused, not rerun."),
    commit: bool = typer.Option(False, "--commit", help="With --publish: git-commit each published cell as it "
                                "finishes (only its files), so a lost machine costs at most the running cells."),
    park: bool = typer.Option(False, "--park", help="Run nothing: copy each unfinished cell's newest checkpoint (and "
                              "its curve points so far) to <--publish>/parked/, committed with --commit, so a run "
                              "on another machine resumes it there instead of starting it over. Stop the running "
                              "reproduce first."),
    jobs: int = typer.Option(1, "--jobs", help="Cells run at once (worker processes; cores / jobs torch threads "
                             "each). On a GPU, several cells share it."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda: where cells train and are evaluated."),
):
    """Run (or resume) every cell of a preset and write the report. Finished cells are reused."""
    from ..report import ship
    from ..report.links import link_runs
    from ..report.plan import full_plan_stage1, later_stage_ids, quick_plan, run_later_stages
    from ..report.publish import Publisher, publish
    from ..report.report import comparison_table, shipped_note, shipped_settings, table2, write_report
    from ..report.runner import cell_pool, check_force, finished_cells, run_plan, train_teachers

    if preset not in ("quick", "full"):
        raise UserError(f"--preset must be quick or full, got {preset!r}")
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if commit and not publish_dir:
        raise UserError("--commit commits published cells: give --publish DIR too")
    _select_device(device)
    if (report_only or park) and (force or retrain_teachers):
        flag = "--report-only" if report_only else "--park"
        raise UserError(f"{flag} runs nothing: it cannot be combined with --force or --retrain-teachers")
    if park and not publish_dir:
        raise UserError("--park keeps unfinished cells in the publish folder: give --publish DIR too")
    cells = quick_plan(seed, ship.manifest()) if preset == "quick" else full_plan_stage1(seed)
    check_force(force, {c.id for c in cells} | (later_stage_ids(seed) if preset == "full" else set()))
    out = out or Path("runs") / preset
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    teacher_map = train_teachers(out) if retrain_teachers else {}
    for c in cells:
        c.teacher_runs = dict(teacher_map)  # retrained teachers are different cells from the shipped ones
        if c.kind == "teacher" and c.model in teacher_map:
            c.model = teacher_map[c.model]
    publisher = Publisher(publish_dir, commit) if publish_dir else None
    pool = None
    if report_only or park:
        def run(cs, priority=0):   # --report-only --publish: the report of every published cell too
            return finished_cells(cs, out, publish_dir if report_only else None)
    else:
        # several jobs: one pool of workers for every stage and both settings' threads (run_later_stages)
        pool = cell_pool(jobs, out, teacher_map, publish_dir) if jobs > 1 else None

        def run(cs, priority=0):  # the --force ids were checked above against every stage
            for c in cs:
                c.teacher_runs = dict(teacher_map)
            return run_plan(cs, out, teacher_map, force, check=False, publisher=publisher, jobs=jobs, pool=pool,
                            priority=priority)
    recs = run(cells)
    planned, pending, every = len(cells), [], list(cells)
    if preset == "full":   # later stages are planned from earlier results, once those are complete
        def finished(cs):   # what a stage has finished already (a forced cell is redone): skipped, not rerun
            return finished_cells([c for c in cs if c.id not in force], out, publish_dir)
        more, pending = run_later_stages(recs, seed, run, jobs, run if report_only or park else finished)
        planned += len(more)
        every += more
    if pool is not None:
        pool.close()
    if park:
        parked = publisher.park(every, out)
        typer.echo("parked: " + (", ".join(f"{c.id} at step {s}" for c, s in parked) or "nothing (no unfinished "
                   "cell with a checkpoint)") + f" -> {publish_dir / 'parked'}")
        return
    cmd = f"danceopd reproduce --preset {preset} --out {out} --seed {seed} --device {device}" + (
        " --retrain-teachers" if retrain_teachers else "") + (f" --publish {publish_dir}" if publish_dir else "")
    path = write_report(recs, out, f"DanceOPD in ShapesWorld — {preset} preset", cmd, planned=planned,
                        pending=pending)
    if publish_dir:
        publish(out, publish_dir)
    links = link_runs(recs, out)
    typer.echo("\n" + comparison_table(recs)[0].split("\n\n")[0] + "\n")
    note = shipped_note(recs)
    if note:   # the converged comparison: both Table-2 blocks too
        for s in shipped_settings(recs):
            typer.echo(f"Table 2, setting {s}:\n" + table2(recs, s)[0].split("\n\n")[0] + "\n")
        typer.echo(note + "\n")
    if links:
        typer.echo(f"students: {', '.join(str(p) for p in links)} (e.g. danceopd eval --model {links[-1]} ...)")
    typer.echo(f"report: {path} and {out / 'report.html'} ({len(recs)} of {planned} cells finished; "
               f"{(time.time() - t0) / 60:.1f} min this run)")
    if pending:
        typer.echo("not planned yet (each stage is planned from the finished one before): " + "; ".join(pending))


def _select_device(device: str) -> None:
    """``cpu`` hides any GPU from this process and its workers (set before CUDA starts); ``cuda`` needs one."""
    import os

    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to torch (torch "
                        f"{torch.__version__}); use --device cpu")
