"""Labelled image grids for the report: a header per column (number, task, the prompt or instruction, wrapped),
a label per row, cells large enough to read (32 px world images drawn at 3x, nearest neighbour)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL, PAD, LABEL_W, CHARS = 96, 8, 200, 15


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_grid(headers: list[str], rows: list[tuple[str, list[np.ndarray | str | None]]]) -> Image.Image:
    """``headers[j]``: column j's text; ``rows``: (label, one cell per column: an image, a short note drawn in a gray
    cell, or None for an empty cell)."""
    font, small = _font(13), _font(11)
    head_lines = [textwrap.wrap(h, CHARS) for h in headers]
    head_h = PAD + 14 * max(len(h) for h in head_lines) + PAD
    col_w = CELL + PAD
    width = LABEL_W + len(headers) * col_w + PAD
    height = head_h + len(rows) * (CELL + PAD) + PAD
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    for j, lines in enumerate(head_lines):
        x = LABEL_W + j * col_w
        for k, line in enumerate(lines):
            d.text((x, PAD + 14 * k), line, fill=(0, 0, 0) if k else (0, 0, 140), font=small)
    for i, (label, cells) in enumerate(rows):
        y = head_h + i * (CELL + PAD)
        lines = textwrap.wrap(label, 24)
        for k, line in enumerate(lines):
            d.text((PAD, y + CELL // 2 - 8 * len(lines) + 16 * k), line, fill=(0, 0, 0), font=font)
        for j, c in enumerate(cells):
            x = LABEL_W + j * col_w
            if isinstance(c, np.ndarray):
                img.paste(Image.fromarray(c).resize((CELL, CELL), Image.NEAREST), (x, y))
            elif c:
                d.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=(235, 235, 235), outline=(200, 200, 200))
                for k, line in enumerate(textwrap.wrap(c, 14)):
                    d.text((x + 6, y + CELL // 2 - 14 + 13 * k), line, fill=(90, 90, 90), font=small)
    return img
