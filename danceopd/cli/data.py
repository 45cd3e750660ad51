"""``danceopd data ...``: convert public datasets into the danceopd dataset CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app

data_app = typer.Typer(help="Convert datasets into the danceopd CSV format.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("convert-omniedit")
def convert_omniedit_cmd(
    input: Path = typer.Option(..., "--input", help="A .parquet/.jsonl file, a folder of them, or a save_to_disk folder."),
    out: Path = typer.Option(..., "--out", help="Folder for data.csv and images/."),
    resolution: int = typer.Option(1024, "--resolution", help="Square side of the written images (center crop)."),
    map_: list[str] = typer.Option([], "--map", help="Task mapping override: --map task=local_edit|global_edit|skip."),
    limit: int = typer.Option(None, "--limit", help="Convert at most this many rows."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
):
    """OmniEdit-style rows (omni_edit_id, task, src_img, edited_img, edited_prompt_list) -> data.csv."""
    from tqdm import tqdm

    from ..data.omniedit import convert_omniedit

    bars: list = []

    def progress(total: int):   # the bar appears once every row's metadata has been validated
        if not bars:
            bars.append(tqdm(total=total, desc="convert", unit="row"))
        bars[0].update(1)

    try:
        res = convert_omniedit(input, out, resolution, map_, limit, overwrite, progress=progress)
    finally:
        for b in bars:
            b.close()
    typer.echo(f"wrote {res['rows']} rows to {out / 'data.csv'} (local_edit={res['local_edit']}, "
               f"global_edit={res['global_edit']}, skipped={res['skipped']})")
