"""``danceopd world ...``: preview, export and benchmark ShapesWorld."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import UserError
from . import app

world_app = typer.Typer(help="ShapesWorld: preview, export datasets, validate CSVs.", no_args_is_help=True)
app.add_typer(world_app, name="world")


def world_config(resolution: int):
    from ..world import DEFAULT_WORLD

    if resolution not in (32, 64):
        raise UserError(f"--resolution must be 32 or 64, got {resolution}")
    return DEFAULT_WORLD.with_resolution(resolution)


@world_app.command("preview")
def preview(
    out: Path = typer.Option(Path("runs/preview.png"), "--out", help="PNG to write."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    per_category: int = typer.Option(3, "--per-category", min=1, max=8, help="Examples per category."),
    resolution: int = typer.Option(32, "--resolution", help="32 or 64."),
):
    """Draw examples of every T2I and edit category with their text (source > target for edits)."""
    from ..util.atomic import save_png_atomic
    from ..world.preview import preview_grid

    cfg = world_config(resolution)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    img = preview_grid(cfg, seed=seed, per_category=per_category, scale=96 // resolution)
    save_png_atomic(img, out)
    typer.echo(f"wrote {out} ({img.width}x{img.height})")


@world_app.command("export")
def export_cmd(
    bucket: str = typer.Option(..., "--bucket", help="t2i | local_edit | global_edit | edit"),
    n: int = typer.Option(..., "--n", help="Number of examples."),
    out: Path = typer.Option(..., "--out", help="Folder for data.csv and images/."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resolution: int = typer.Option(32, "--resolution", help="32 or 64."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
):
    """Write PNGs plus data.csv (uid,task,raw_task,prompt,source_image,target_image,caption_dict)."""
    from tqdm import tqdm

    from ..world.dataset import export
    from ..world.sampler import BUCKETS

    if bucket not in BUCKETS:
        raise UserError(f"--bucket {bucket!r} unknown; expected one of {', '.join(BUCKETS)}")
    cfg = world_config(resolution)
    with tqdm(total=n, desc=f"export {bucket}", unit="ex") as bar:
        path = export(bucket, n, seed, out, cfg, overwrite=overwrite, progress=bar.update)
    typer.echo(f"wrote {n} examples to {path / 'data.csv'}")


@world_app.command("validate")
def validate_cmd(
    csv: Path = typer.Argument(..., help="Dataset CSV to check."),
    bucket: list[str] = typer.Option([], "--bucket", help="Buckets that must be non-empty (repeatable)."),
    resolution: int = typer.Option(0, "--resolution", help="Required image side (0 = any, but all equal)."),
):
    """Validate a dataset CSV the way every trainer does; prints a summary or one error line (exit 2)."""
    from collections import Counter

    from ..world.dataset import load_csv

    ds = load_csv(csv, buckets=bucket, resolution=resolution or None)
    counts = Counter(r.task for r in ds.rows)
    typer.echo(f"{csv}: {len(ds.rows)} rows, images {ds.size[0]}x{ds.size[1]}, "
               + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
