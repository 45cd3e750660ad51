"""A picture of the world: examples of every category with their text (source | instruction | target)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .edits import EDIT_CATEGORIES
from .prompts import T2I_CATEGORIES
from .sampler import render_batch, sample_example
from .vocab import WorldConfig


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def preview_grid(cfg: WorldConfig, seed: int = 0, per_category: int = 3, scale: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    res = cfg.resolution
    cell = res * scale
    font = _font(11)
    label_w, text_h, pad = 120, 30, 6
    tile_w = 2 * cell + pad  # edits show source and target side by side
    cats = list(T2I_CATEGORIES) + list(EDIT_CATEGORIES)
    W = label_w + per_category * (tile_w + pad) + pad
    H = len(cats) * (cell + text_h + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, cat in enumerate(cats):
        y = pad + r * (cell + text_h + pad)
        draw.text((pad, y + cell // 2 - 6), cat, fill=(0, 0, 0), font=font)
        for k in range(per_category):
            ex = sample_example(rng, cfg, "t2i" if cat in T2I_CATEGORIES else "edit", raw_task=cat)
            b = render_batch([ex], cfg)
            x = label_w + k * (tile_w + pad)
            up = Image.fromarray(b.target[0]).resize((cell, cell), Image.NEAREST)
            if ex.source is not None:
                canvas.paste(Image.fromarray(b.source[0]).resize((cell, cell), Image.NEAREST), (x, y))
                draw.text((x + cell - 1, y + cell // 2 - 7), ">", fill=(200, 0, 0), font=font)
                canvas.paste(up, (x + cell + pad, y))
            else:
                canvas.paste(up, (x, y))
            lines = textwrap.wrap(ex.prompt, width=34)[:2]
            draw.multiline_text((x, y + cell + 2), "\n".join(lines), fill=(30, 30, 30), font=_font(9), spacing=1)
    return canvas
