"""``danceopd sample`` and ``danceopd edit``: generate from a prompt / edit an image, single or batch (CSV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from ..errors import UserError
from . import app


def _save_png(img: np.ndarray, out: Path):
    from PIL import Image

    from ..util.atomic import save_png_atomic

    save_png_atomic(Image.fromarray(img), out)


def _contact_sheet(rows: list[tuple[np.ndarray | None, np.ndarray, str]], path: Path, scale: int = 3):
    from PIL import Image, ImageDraw, ImageFont

    h = rows[0][1].shape[0] * scale
    w_img = h
    cols = 4
    cell_w, cell_h = 2 * w_img + 10, h + 28
    n = len(rows)
    sheet = Image.new("RGB", (cols * cell_w + 10, ((n + cols - 1) // cols) * cell_h + 10), "white")
    d = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (src, out, text) in enumerate(rows):
        x, y = 5 + (i % cols) * cell_w, 5 + (i // cols) * cell_h
        if src is not None:
            sheet.paste(Image.fromarray(src).resize((w_img, h), Image.NEAREST), (x, y))
            x2 = x + w_img + 4
        else:
            x2 = x
        sheet.paste(Image.fromarray(out).resize((w_img, h), Image.NEAREST), (x2, y))
        d.text((x, y + h + 2), text[:44], fill=(0, 0, 0), font=font)
    _save_png(np.asarray(sheet), path)


def _load(model: str, resolution: int | None, pipeline: str | None = None, lora: str | None = None):
    from ..backends.diffusers import load_for_generation
    from ..backends.registry import load_backend

    if _is_diffusers(model, pipeline, lora):   # a diffusers model (docs/backends.md)
        if lora is not None and pipeline is None:
            raise UserError("--lora needs --pipeline (the base diffusers pipeline folder)")
        return load_for_generation(None if pipeline else model, pipeline, lora, resolution)
    return load_backend(model, resolution)


def _is_diffusers(model: str, pipeline: str | None, lora: str | None) -> bool:
    from ..backends.diffusers import is_diffusers_run

    return pipeline is not None or lora is not None or is_diffusers_run(model)


def check_words(text: str, flag: str, allow: bool) -> None:
    """ShapesWorld models know a closed vocabulary: an unknown word is an error (a warning with
    ``--allow-unknown-words``), never silently dropped."""
    from ..world.understand import known_words, unknown_words, vocabulary_line

    bad = unknown_words(text)
    if not bad:
        return
    msg = (f"{flag} {text!r}: {', '.join(repr(w) for w in bad)} not in the ShapesWorld vocabulary "
           f"({vocabulary_line()}; all words: {' '.join(sorted(known_words()))})")
    if not allow:
        raise UserError(msg + "; pass --allow-unknown-words to generate anyway")
    typer.echo(f"warning: {msg}; the model ignores these words", err=True)


_ALLOW_UNKNOWN = typer.Option(False, "--allow-unknown-words",
                              help="ShapesWorld models: warn about words outside the vocabulary instead of failing.")


def _overrides(steps, text_scale, image_scale):
    kw = {}
    if steps is not None:
        if steps < 1:
            raise UserError(f"--steps must be >= 1, got {steps}")
        kw["steps"] = steps
    if text_scale is not None:
        kw["text_scale"] = text_scale
    if image_scale is not None:
        kw["image_scale"] = image_scale
    return kw


def _fit(src: np.ndarray, be) -> np.ndarray:
    """Diffusers models take any source image: center-crop and resize it to the model's resolution."""
    if not hasattr(be, "shared") or src.shape[:2] == (be.resolution, be.resolution):
        return src
    from PIL import Image

    h, w = src.shape[:2]
    s = min(h, w)
    im = Image.fromarray(src[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    return np.asarray(im.resize((be.resolution, be.resolution), Image.LANCZOS))


@app.command("sample")
def sample_cmd(
    model: str = typer.Option("world:t2i", "--model", help="world:<name>, shipped:<setting>_<method>, a model .safetensors or a run folder."),
    prompt: str = typer.Option(None, "--prompt", help="Text prompt (single image)."),
    csv: Path = typer.Option(None, "--csv", help="Batch mode: a dataset CSV; every t2i row's prompt is sampled."),
    out: Path = typer.Option(..., "--out", help="PNG (single) or folder (batch, with contact_sheet.png)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    steps: int = typer.Option(None, "--steps", help="Euler steps (default: the model's)."),
    text_scale: float = typer.Option(None, "--text-scale", help="Classifier-free guidance scale."),
    pipeline: str = typer.Option(None, "--pipeline", help="A diffusers pipeline folder (SD3, Z-Image, Kontext)."),
    lora: str = typer.Option(None, "--lora", help="With --pipeline: a LoRA folder/file (e.g. a distilled run)."),
    resolution: int = typer.Option(None, "--resolution", help="Diffusers models: image side in pixels."),
    allow_unknown_words: bool = _ALLOW_UNKNOWN,
):
    """Text-to-image: `danceopd sample --model world:t2i --prompt "a red circle" --out a.png`."""
    if (prompt is None) == (csv is None):
        raise UserError("give exactly one of --prompt or --csv")
    kw = _overrides(steps, text_scale, None)
    if csv is not None:
        from ..world.dataset import load_csv

        ds = load_csv(csv, buckets=["t2i"])
        rows = ds.bucket("t2i")
        be = _load(model, resolution or ds.size[0], pipeline, lora)
        imgs = be.sample([r.prompt for r in rows], seed=seed, **kw)
        for r, im in zip(rows, imgs):
            _save_png(im, out / f"{r.uid}.png")
        _contact_sheet([(None, im, r.prompt) for r, im in zip(rows, imgs)], out / "contact_sheet.png")
        typer.echo(f"wrote {len(rows)} images and {out / 'contact_sheet.png'}")
        return
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png, got {out}")
    if not _is_diffusers(model, pipeline, lora):
        check_words(prompt, "--prompt", allow_unknown_words)
    be = _load(model, resolution, pipeline, lora)
    _save_png(be.sample([prompt], seed=seed, **kw)[0], out)
    typer.echo(f"wrote {out}")


@app.command("edit")
def edit_cmd(
    model: str = typer.Option("world:edit", "--model", help="world:<name>, shipped:<setting>_<method>, a model .safetensors or a run folder."),
    image: Path = typer.Option(None, "--image", help="Source image (single edit)."),
    instruction: str = typer.Option(None, "--instruction", help="Edit instruction (single edit)."),
    csv: Path = typer.Option(None, "--csv", help="Batch mode: a dataset CSV; every edit row is applied."),
    out: Path = typer.Option(..., "--out", help="PNG (single) or folder (batch, with contact_sheet.png)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    steps: int = typer.Option(None, "--steps", help="Euler steps (default: the model's)."),
    text_scale: float = typer.Option(None, "--text-scale", help="Text guidance scale."),
    image_scale: float = typer.Option(None, "--image-scale", help="Image guidance scale."),
    pipeline: str = typer.Option(None, "--pipeline", help="A diffusers pipeline folder (SD3, Z-Image, Kontext)."),
    lora: str = typer.Option(None, "--lora", help="With --pipeline: a LoRA folder/file (e.g. a distilled run)."),
    resolution: int = typer.Option(None, "--resolution", help="Diffusers models: image side in pixels."),
    allow_unknown_words: bool = _ALLOW_UNKNOWN,
):
    """Edit an image: `danceopd edit --model world:edit --image src.png --instruction "..." --out b.png`."""
    from PIL import Image

    kw = _overrides(steps, text_scale, image_scale)
    if csv is not None:
        if image is not None or instruction is not None:
            raise UserError("--csv excludes --image/--instruction")
        from ..world.dataset import load_csv

        ds = load_csv(csv, buckets=["edit"])
        rows = ds.bucket("edit")
        be = _load(model, resolution or ds.size[0], pipeline, lora)
        srcs = np.stack([_fit(ds.load(r)[0], be) for r in rows])
        imgs = be.sample([r.prompt for r in rows], srcs, seed=seed, **kw)
        for r, im in zip(rows, imgs):
            _save_png(im, out / f"{r.uid}.png")
        _contact_sheet([(s, im, r.prompt) for s, r, im in zip(srcs, rows, imgs)], out / "contact_sheet.png")
        typer.echo(f"wrote {len(rows)} edits and {out / 'contact_sheet.png'}")
        return
    if image is None or not instruction:
        raise UserError("give --image and --instruction (or --csv for batch mode)")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png, got {out}")
    if not _is_diffusers(model, pipeline, lora):
        check_words(instruction, "--instruction", allow_unknown_words)
    if not image.is_file():
        raise UserError(f"{image}: image not found")
    try:
        with Image.open(image) as im:
            if max(im.size) > 4096:
                raise UserError(f"{image}: {im.size[0]}x{im.size[1]} is larger than the 4096 px limit")
            src = np.asarray(im.convert("RGB"))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{image}: unreadable image ({type(e).__name__})") from None
    be = _load(model, resolution, pipeline, lora)
    src = _fit(src, be)
    if src.shape[:2] != (be.resolution, be.resolution):
        raise UserError(f"{image}: is {src.shape[1]}x{src.shape[0]}, the model expects "
                        f"{be.resolution}x{be.resolution}")
    _save_png(be.sample([instruction], src[None], seed=seed, **kw)[0], out)
    typer.echo(f"wrote {out}")
