"""``danceopd eval``: score a model (or a calibration generator) on the offline benchmark suite."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import app


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., "--model", help="oracle | identity | noise | degrade:<level> | model name | checkpoint."),
    suite: str = typer.Option("all", "--suite", help="t2i | edit | all"),
    n: int = typer.Option(100, "--n", help="Images per category (T2I: n/4 prompts x 4 images; edits: n examples)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt / edit sets and the generator noise."),
    out: Path = typer.Option(..., "--out", help="Folder for scores.json, scores.md, contact_sheet.png."),
    resolution: int = typer.Option(32, "--resolution", help="32 or 64."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per generate() call (part of the result's key)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    threads: int = typer.Option(1, "--threads", help="Torch threads for the scoring networks (0 = torch default)."),
):
    """GEdit-style edit scores, GenEval-style T2I accuracy, FID / CLIP score / LPIPS on ShapesWorld, judged by
    small frozen networks shipped with the package (docs/evaluation.md)."""
    from ..eval.generators import resolve_generator
    from ..eval.report import write_outputs
    from ..eval.suite import check_args, evaluate_with_samples

    check_args(suite, n, resolution, batch_size)
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to write into it")
    generator = resolve_generator(model, resolution)
    scores, samples = evaluate_with_samples(generator, suite, n, seed, resolution, batch_size, progress,
                                            threads or None)
    paths = write_outputs(out, scores, samples)
    g, ge = scores.get("gedit"), scores.get("geneval")
    if g:
        typer.echo(f"GEdit avg: SC {g['avg']['sc']:.2f}  PQ {g['avg']['pq']:.2f}  O {g['avg']['o']:.2f}")
    if ge:
        typer.echo(f"GenEval overall: {ge['overall']:.3f}")
    parts = [f"{k} {scores[k]:.4g}" for k in ("fid", "clip_score", "lpips") if scores.get(k) is not None]
    if parts:
        typer.echo("  ".join(parts) + ("  (clip_score: T2I outputs vs prompts; lpips: all edits)" if g else ""))
    by_bucket = scores.get("clip_score_by_bucket") or {}
    if by_bucket:  # the comparison table's columns: local_edit CLIP score, global_edit LPIPS
        typer.echo("edit outputs by bucket (the comparison table uses local_edit clip_score, global_edit lpips):")
    for b, cs in by_bucket.items():
        typer.echo(f"  {b}: clip_score {cs:.2f}  lpips {scores['lpips_by_bucket'][b]:.4f}")
    typer.echo(f"wrote {', '.join(str(p) for p in paths)} ({scores['timings']['total_s']:.1f}s)")
