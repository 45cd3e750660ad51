"""Deterministic Pillow renderer: draw at ``supersample`` x resolution, then box-filter down (exact area
antialiasing, so every output pixel depends only on its own footprint: edits stay pixel-local).
Styles are per-pixel operations (invert, tint, scanlines) or a drawing mode (outline)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import Obj, Scene
from .vocab import BACKGROUND_COLORS, OBJECT_COLORS, WorldConfig

TINT_RGB = np.array([255, 160, 60], dtype=np.float32)
TINT_ALPHA = 0.35
SCANLINE_GAIN = 0.55


def _star(cx, cy, r, points=5, inner=0.45):
    pts = []
    for i in range(points * 2):
        rad = r if i % 2 == 0 else r * inner
        a = -math.pi / 2 + i * math.pi / points
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _polygon(cx, cy, r, n, rot=-math.pi / 2):
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n)) for i in range(n)]


def object_box(o: Obj, grid: int, px: float) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of an object in pixels of an image ``px`` wide."""
    cell = px / grid
    cx = (o.col(grid) + 0.5 + o.dx) * cell
    cy = (o.row(grid) + 0.5 + o.dy) * cell
    r = o.size * cell / 2
    return (cx - r, cy - r, cx + r, cy + r)


def _draw_obj(draw: ImageDraw.ImageDraw, o: Obj, grid: int, px: int, outline_w: int | None):
    x0, y0, x1, y1 = object_box(o, grid, px)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    col = OBJECT_COLORS[o.color]
    kw = {"outline": col, "width": outline_w} if outline_w else {"fill": col}
    if o.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], **kw)
    elif o.shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], **kw)
    elif o.shape == "triangle":
        draw.polygon([(cx, y0), (x1, cy + r * 0.85), (x0, cy + r * 0.85)], **kw)
    elif o.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.08), **kw)
    elif o.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], **kw)
    elif o.shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0.0), **kw)
    elif o.shape == "cross":
        w = r * 0.38
        if outline_w:
            pts = [(cx - w, y0), (cx + w, y0), (cx + w, cy - w), (x1, cy - w), (x1, cy + w), (cx + w, cy + w),
                   (cx + w, y1), (cx - w, y1), (cx - w, cy + w), (x0, cy + w), (x0, cy - w), (cx - w, cy - w)]
            draw.polygon(pts, **kw)
        else:
            draw.rectangle([cx - w, y0, cx + w, y1], fill=col)
            draw.rectangle([x0, cy - w, x1, cy + w], fill=col)
    else:  # pragma: no cover - guarded by WorldConfig
        raise ValueError(f"unknown shape {o.shape!r}")


def apply_style(img: np.ndarray, style: str | None) -> np.ndarray:
    """Per-pixel style op on a uint8 [H, W, 3] image (``outline`` is a drawing mode, handled in ``render``)."""
    if style in (None, "outline"):
        return img
    if style == "invert":
        return 255 - img
    f = img.astype(np.float32)
    if style == "tint":
        f = f * (1 - TINT_ALPHA) + TINT_RGB * TINT_ALPHA
    elif style == "scanlines":
        f[1::2] *= SCANLINE_GAIN
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def render(scene: Scene, cfg: WorldConfig, resolution: int | None = None) -> np.ndarray:
    """Render ``scene`` to uint8 [H, W, 3]. Same scene, same bytes."""
    res = resolution or cfg.resolution
    ss = cfg.supersample
    px = res * ss
    im = Image.new("RGB", (px, px), BACKGROUND_COLORS[scene.background])
    draw = ImageDraw.Draw(im)
    outline_w = max(1, round(1.25 * ss * res / 32)) if scene.style == "outline" else None
    for o in scene.objects:
        _draw_obj(draw, o, scene.grid, px, outline_w)
    im = im.reduce(ss)  # box filter: exact area average of each ss x ss block
    return apply_style(np.asarray(im), scene.style)


def edit_region_mask(objs, grid: int, res: int, ss: int) -> np.ndarray:
    """Bool [H, W] mask of output pixels whose footprint touches any of ``objs`` (what a local edit may change)."""
    m = np.zeros((res, res), dtype=bool)
    px = res * ss
    for o in objs:
        x0, y0, x1, y1 = object_box(o, grid, px)
        # star is drawn slightly larger than its box; pad by 10% of the radius plus a hi-res pixel
        pad = 0.1 * (x1 - x0) / 2 + 1
        c0, r0 = max(0, math.floor((x0 - pad) / ss)), max(0, math.floor((y0 - pad) / ss))
        c1, r1 = min(res, math.ceil((x1 + pad) / ss)), min(res, math.ceil((y1 + pad) / ss))
        m[r0:r1, c0:c1] = True
    return m


def coverage(scene: Scene, cfg: WorldConfig, resolution: int | None = None) -> np.ndarray:
    """uint8 [H, W] fraction (0..255) of each output pixel covered by objects, drawn exactly as ``render`` draws
    them. A background change may touch only pixels with coverage < 255."""
    res = resolution or cfg.resolution
    ss = cfg.supersample
    px = res * ss
    im = Image.new("RGB", (px, px), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    outline_w = max(1, round(1.25 * ss * res / 32)) if scene.style == "outline" else None
    for o in scene.objects:
        _draw_obj(draw, Obj(o.shape, "white", o.slot, o.dx, o.dy, o.size), scene.grid, px, outline_w)
    return np.asarray(im.reduce(ss))[..., 0].copy()
