"""Writing an evaluation: scores.json, scores.md (tables) and contact_sheet.png, each written atomically."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..util.atomic import save_png_atomic, write_text_atomic
from ..world.edits import EDIT_CATEGORIES
from ..world.prompts import T2I_CATEGORIES
from .imageops import box_upscale
from .suite import GEDIT_LABELS, GENEVAL_LABELS, Sample

OUTPUT_FILES = ("scores.json", "scores.md", "contact_sheet.png")


def _f(x, nd=2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def scores_markdown(s: dict) -> str:
    lines = [f"# Evaluation of `{s['model']}`", "",
             f"suite `{s['suite']}`, seed {s['seed']}, n = {s['n']} images per category, {s['resolution']} px, "
             f"judge `{s['judge_version']}`, CLIP `{s['clip_version']}`", ""]
    g = s.get("gedit")
    if g:
        lines += ["## GEdit-style edit scores (0-10)", "", "| category | SC | PQ | O |", "|---|---:|---:|---:|"]
        for c in EDIT_CATEGORIES:
            lines.append(f"| {GEDIT_LABELS[c]} | {_f(g[c]['sc'])} | {_f(g[c]['pq'])} | {_f(g[c]['o'])} |")
        lines += [f"| **avg** | {_f(g['avg']['sc'])} | {_f(g['avg']['pq'])} | {_f(g['avg']['o'])} |", ""]
    ge = s.get("geneval")
    if ge:
        heads = [GENEVAL_LABELS[c] for c in T2I_CATEGORIES] + ["overall"]
        lines += ["## GenEval-style T2I accuracy", "", "| " + " | ".join(heads) + " |",
                  "|" + "---:|" * len(heads),
                  "| " + " | ".join(_f(ge[c], 3) for c in [*T2I_CATEGORIES, "overall"]) + " |", ""]
    lines += ["## Image quality", "", "| FID (judge features, T2I) | CLIP score (T2I) | LPIPS (judge, edits vs target) |",
              "|---:|---:|---:|", f"| {_f(s.get('fid'))} | {_f(s.get('clip_score'))} | {_f(s.get('lpips'), 4)} |", ""]
    by_cs, by_lp = s.get("clip_score_by_bucket") or {}, s.get("lpips_by_bucket") or {}
    if by_cs:  # the comparison table's columns: local-edit CLIP score, global-edit LPIPS
        lines += ["## Edit outputs by bucket (CLIP score vs a caption of the exact target; LPIPS vs the target)", "",
                  "| bucket | CLIP score | LPIPS |", "|---|---:|---:|"]
        lines += [f"| {b} | {_f(by_cs[b])} | {_f(by_lp.get(b), 4)} |" for b in by_cs]
        lines.append("")
    std = s.get("standard") or {}
    if std:
        lines += ["## Standard metrics (only with local weights)", "", "| metric | value | note |", "|---|---:|---|"]
        for k, v in std.items():
            lines.append(f"| {k} | {_f(v['value'], 3)} | {v['reason'] or ''} |")
        lines.append("")
    ns = s.get("n_samples") or {}
    if ns:
        lines += ["## Samples", "", ", ".join(f"{k} = {v}" for k, v in ns.items()), ""]
    t = s.get("timings") or {}
    if t:
        lines += ["## Timings", "", ", ".join(f"{k} = {v}" for k, v in t.items()), ""]
    return "\n".join(lines)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(samples: list[Sample], per_t2i: int = 6, per_edit: int = 3, tile: int = 96) -> Image.Image:
    """Rows per category: T2I images with pass/fail and CLIP score; edits as source > output | target with
    SC / PQ / O. Samples are the first ones of each category (first image of each prompt for T2I)."""
    font, small = _font(11), _font(9)
    label_w, pad, text_h = 112, 6, 28
    rows: list[tuple[str, list[Sample]]] = []
    for cat in T2I_CATEGORIES:
        seen, picked = set(), []
        for smp in samples:
            if smp.kind == "t2i" and smp.category == cat and smp.prompt not in seen:
                seen.add(smp.prompt)
                picked.append(smp)
        if picked:
            rows.append((f"T2I {GENEVAL_LABELS[cat]}", picked[:per_t2i]))
    for cat in EDIT_CATEGORIES:
        picked = [smp for smp in samples if smp.kind == "edit" and smp.category == cat][:per_edit]
        if picked:
            rows.append((f"edit {GEDIT_LABELS[cat]}", picked))
    edit_w = 3 * tile + 2 * 4
    width = label_w + max(per_t2i * (tile + pad), per_edit * (edit_w + pad)) + pad
    height = max(1, len(rows)) * (tile + text_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def paste(img: np.ndarray, x: int, y: int):
        f = max(1, tile // img.shape[0])
        canvas.paste(Image.fromarray(box_upscale(img, f)).resize((tile, tile), Image.NEAREST), (x, y))

    for r, (label, picked) in enumerate(rows):
        y = pad + r * (tile + text_h + pad)
        draw.text((pad, y + tile // 2 - 6), label, fill=(0, 0, 0), font=font)
        x = label_w
        for smp in picked:
            if smp.kind == "t2i":
                paste(smp.image, x, y)
                ok = smp.scores.get("pass")
                head = f"{'PASS' if ok else 'FAIL'}  clip {smp.scores.get('clip', 0):.0f}"
                color = (0, 120, 0) if ok else (200, 0, 0)
                text = textwrap.shorten(smp.prompt, width=20, placeholder="…")
                draw.text((x, y + tile + 1), head, fill=color, font=small)
                draw.text((x, y + tile + 13), text, fill=(40, 40, 40), font=small)
                x += tile + pad
            else:
                paste(smp.source, x, y)
                paste(smp.image, x + tile + 4, y)
                paste(smp.target, x + 2 * tile + 8, y)
                draw.rectangle([x + tile + 3, y - 1, x + 2 * tile + 4, y + tile], outline=(0, 0, 0))
                sc = smp.scores
                head = f"SC {sc['sc']:.1f}  PQ {sc['pq']:.1f}  O {sc['o']:.1f}  (src | out | tgt)"
                color = (0, 120, 0) if sc["o"] >= 5 else (200, 0, 0)
                draw.text((x, y + tile + 1), head, fill=color, font=small)
                draw.text((x, y + tile + 13), textwrap.shorten(smp.prompt, width=52, placeholder="…"),
                          fill=(40, 40, 40), font=small)
                x += edit_w + pad
    return canvas


def write_outputs(out: Path, scores: dict, samples: list[Sample]) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in OUTPUT_FILES]
    write_text_atomic(paths[0], json.dumps(scores, indent=2, sort_keys=False) + "\n")
    write_text_atomic(paths[1], scores_markdown(scores))
    save_png_atomic(contact_sheet(samples), paths[2])
    return paths
