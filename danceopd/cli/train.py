"""``danceopd train``: supervised flow-matching training (T2I base, edit teachers) from a typed YAML config."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import app


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config, e.g. configs/world/t2i.yaml."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.steps=100 (repeatable)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/<name>)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides the config's seed)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest good checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
):
    """Train a ShapesWorld model (SFT): `danceopd train --config configs/world/t2i.yaml`."""
    from ..config import load_config
    from ..train.sft import SFTConfig, train_sft

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    cfg = load_config(SFTConfig, config, overrides)
    run = train_sft(cfg, out or Path("runs") / cfg.name, resume=resume, overwrite=overwrite)
    typer.echo(f"run folder: {run}")
