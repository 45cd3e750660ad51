"""A demo result as HTML: input / target and every model's output side by side at a readable size, each with the
judge's verdict per constraint (green pass, red fail)."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .core import Panel, Result

SCALE = 6  # 32 px world images shown at 192 px, nearest neighbour (pixels stay sharp)

CSS = """
.dopd-row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.dopd-card{border:1px solid #d0d0d0;border-radius:8px;padding:8px;width:212px;background:#fff;color:#111}
.dopd-card.dopd-input{background:#f4f7fb}
.dopd-card h4{margin:0 0 6px 0;font-size:14px;word-break:break-all}
.dopd-card img{width:192px;height:192px;image-rendering:pixelated;display:block;border:1px solid #999}
.dopd-card ul{list-style:none;padding:0;margin:6px 0 0 0;font-size:12.5px}
.dopd-card li{margin:2px 0}
.dopd-pass{color:#0a7d16}.dopd-fail{color:#c01818}.dopd-info{color:#333}
.dopd-note{font-size:12px;color:#444;margin-top:4px}
.dopd-head{margin:10px 0 6px 0;font-size:14px}
.dopd-flag{background:#fff3cd;border:1px solid #e0b84a;border-radius:6px;padding:6px 10px;margin:6px 0;color:#5c4400}
.dopd-error{background:#fde2e2;border:1px solid #d66;border-radius:6px;padding:6px 10px;color:#7a1010}
.dopd-empty{width:192px;height:192px;display:flex;align-items:center;justify-content:center;text-align:center;
 border:1px dashed #aaa;font-size:12px;color:#555}
"""


def png_data_url(img: np.ndarray, scale: int = SCALE) -> str:
    from PIL import Image

    im = Image.fromarray(img)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def flag_html(words: list[str]) -> str:
    if not words:
        return ""
    w = ", ".join(f"<b>{html.escape(x)}</b>" for x in words)
    return (f"<div class='dopd-flag' id='dopd-unknown'>Not in the ShapesWorld vocabulary (the models ignore them): "
            f"{w}</div>")


def error_html(message: str) -> str:
    return f"<div class='dopd-error' id='dopd-error'>{html.escape(message)}</div>"


def card_html(p: Panel, kind: str) -> str:
    out = [f"<div class='dopd-card dopd-{kind}'><h4>{html.escape(p.title)}</h4>"]
    if p.image is not None:
        out.append(f"<img class='dopd-img' alt='{html.escape(p.title)}' src='{png_data_url(p.image)}'>")
    else:
        out.append(f"<div class='dopd-empty'>{html.escape(p.note)}</div>")
    if p.checks:
        out.append("<ul class='dopd-verdict'>")
        for c in p.checks:
            cls, mark = {True: ("dopd-pass", "✓"), False: ("dopd-fail", "✗"), None: ("dopd-info", "·")}[c.ok]
            out.append(f"<li class='{cls}'>{mark} {html.escape(c.text)}</li>")
        out.append("</ul>")
    if p.image is not None and p.note:
        out.append(f"<div class='dopd-note'>{html.escape(p.note)}</div>")
    out.append("</div>")
    return "".join(out)


def result_html(res: Result) -> str:
    parts = [flag_html(res.unknown)]
    parts += [f"<p class='dopd-note'>{html.escape(n)}</p>" for n in res.notes]
    if res.inputs:
        edit = any(p.title.startswith("input") for p in res.inputs)
        parts.append(f"<h4 class='dopd-head'>{'Input and target' if edit else 'Reference'}</h4>")
        parts.append(f"<div class='dopd-row' id='dopd-inputs'>{''.join(card_html(p, 'input') for p in res.inputs)}</div>")
    parts.append(f"<h4 class='dopd-head'>Models (seed {res.seed})</h4>")
    parts.append(f"<div class='dopd-row' id='dopd-result'>{''.join(card_html(p, 'output') for p in res.outputs)}</div>")
    parts.append(f"<p class='dopd-note' id='dopd-time'>seed {res.seed}; answered in {res.seconds:.2f} s</p>")
    return "".join(parts)
