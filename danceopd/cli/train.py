"""``danceopd train`` (SFT: T2I base, edit teachers) and ``danceopd distill`` (DanceOPD and every baseline), both
from typed YAML configs with ``--set`` overrides."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import app

SET_HELP = "Override a config key: --set train.steps=100 (repeatable)."


def _run(kind: str, config: Path, set_: list[str], out: Path | None, seed: int | None, resume: bool,
         overwrite: bool):
    from ..config import load_config

    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if kind == "train":
        from ..train.sft import SFTConfig as Cfg
        from ..train.sft import train_sft as run
    else:
        from ..train.distill import DistillConfig as Cfg
        from ..train.distill import train_distill as run
    overrides = list(set_) + ([f"seed={seed}"] if seed is not None else [])
    cfg = load_config(Cfg, config, overrides)
    folder = run(cfg, out or Path("runs") / cfg.name, resume=resume, overwrite=overwrite)
    typer.echo(f"run folder: {folder}")


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config, e.g. configs/world/t2i.yaml."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/<name>)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides the config's seed)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest good checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
):
    """Train a ShapesWorld model (SFT): `danceopd train --config configs/world/t2i.yaml`."""
    _run("train", config, set_, out, seed, resume, overwrite)


@app.command("distill")
def distill_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config, e.g. configs/world/A_danceopd.yaml."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    out: Path = typer.Option(None, "--out", help="Run folder (default runs/<name>)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (overrides the config's seed)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest good checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
):
    """Distill frozen teacher fields into one student (method chosen by `method:` in the config)."""
    _run("distill", config, set_, out, seed, resume, overwrite)
