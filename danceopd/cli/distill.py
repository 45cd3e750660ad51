"""``danceopd distill``: DanceOPD and every baseline on one engine, from a typed YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import app


@app.command("distill")
def distill_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config, e.g. configs/world/A_danceopd.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.steps=100 (repeatable)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/<name>)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides the config's seed)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest good checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
):
    """Distill frozen teacher fields into one student (method chosen by `method:` in the config)."""
    from ..config import load_config
    from ..train.distill import DistillConfig, train_distill

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    cfg = load_config(DistillConfig, config, overrides)
    run = train_distill(cfg, out or Path("runs") / cfg.name, resume=resume, overwrite=overwrite)
    typer.echo(f"run folder: {run}")
