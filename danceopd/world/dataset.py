"""The dataset CSV (``uid,task,raw_task,prompt,source_image,target_image,caption_dict``): export and the one
validating loader every trainer shares. Image paths are relative to the CSV. The loader checks the whole file
before any expensive work and raises ``UserError`` with one line naming the file, row and problem."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .sampler import TASKS, WorldStream, bucket_tasks, render_batch
from .vocab import WorldConfig

COLUMNS = ("uid", "task", "raw_task", "prompt", "source_image", "target_image", "caption_dict")
MAX_SIDE = 4096  # refuse enormous images before decoding them


@dataclass(frozen=True)
class Row:
    line: int              # 1-based line in the CSV (header = 1)
    uid: str
    task: str
    raw_task: str
    prompt: str
    source_image: Path | None
    target_image: Path
    caption: dict | None


@dataclass
class EditDataset:
    path: Path
    rows: list[Row]
    size: tuple[int, int]  # (width, height) shared by every image

    def bucket(self, bucket: str) -> list[Row]:
        tasks = bucket_tasks(bucket)
        return [r for r in self.rows if r.task in tasks]

    def load(self, row: Row) -> tuple[np.ndarray | None, np.ndarray]:
        """(source or None, target) as uint8 [H, W, 3]."""
        src = np.asarray(Image.open(row.source_image).convert("RGB")) if row.source_image else None
        return src, np.asarray(Image.open(row.target_image).convert("RGB"))


def _check_image(csv_path: Path, line: int, col: str, rel: str, root: Path, size, max_side: int):
    where = f"{csv_path}:{line}: column {col}"
    if os.path.isabs(rel) or rel.startswith(("~", "\\")):
        raise UserError(f"{where}: path {rel!r} must be relative to the CSV's folder")
    p = (root / rel).resolve()
    if root not in p.parents:
        raise UserError(f"{where}: path {rel!r} escapes the CSV's folder {root}")
    if not p.is_file():
        raise UserError(f"{where}: image {rel!r} not found (looked at {p})")
    try:
        with Image.open(p) as im:
            w, h = im.size
            mode = im.mode
            if w > max_side or h > max_side:
                raise UserError(f"{where}: image {rel!r} is {w}x{h}, larger than the {max_side} px limit")
            im.load()
    except UserError:
        raise
    except Exception as e:  # truncated, not an image, decompression bomb, ...
        raise UserError(f"{where}: image {rel!r} is unreadable ({type(e).__name__}: {str(e)[:80]})") from None
    if mode != "RGB":
        raise UserError(f"{where}: image {rel!r} has mode {mode}, expected RGB")
    if size is not None and (w, h) != tuple(size):
        raise UserError(f"{where}: image {rel!r} is {w}x{h}, expected {size[0]}x{size[1]}")
    return p, (w, h)


def load_csv(path, buckets=None, resolution: int | None = None, max_side: int = MAX_SIDE) -> EditDataset:
    """Validate and load a dataset CSV. ``buckets``: route buckets that must be non-empty. ``resolution``: every
    image must be resolution x resolution (else all images must share the first image's size)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: dataset CSV not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (bad byte at offset {e.start}); save the CSV as UTF-8") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = reader.fieldnames or []
    except csv.Error as e:
        raise UserError(f"{path}:1: malformed CSV header ({e})") from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}:1: missing column(s) {', '.join(missing)}; expected header {','.join(COLUMNS)}")
    root = path.parent.resolve()
    size = (resolution, resolution) if resolution else None
    rows: list[Row] = []
    seen: set[str] = set()
    try:
        records = list(reader)
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    for i, rec in enumerate(records):
        line = i + 2
        if None in rec or any(v is None for v in rec.values()):
            raise UserError(f"{path}:{line}: wrong number of fields; expected {len(header)}")
        uid, task = rec["uid"].strip(), rec["task"].strip()
        if not uid:
            raise UserError(f"{path}:{line}: column uid is empty")
        if uid in seen:
            raise UserError(f"{path}:{line}: duplicate uid {uid!r}")
        seen.add(uid)
        if task not in TASKS:
            raise UserError(f"{path}:{line}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if not rec["prompt"].strip():
            raise UserError(f"{path}:{line}: column prompt is empty")
        if not rec["target_image"].strip():
            raise UserError(f"{path}:{line}: column target_image is empty")
        src_rel = rec["source_image"].strip()
        if task != "t2i" and not src_rel:
            raise UserError(f"{path}:{line}: task {task} needs a source_image")
        if task == "t2i" and src_rel:
            raise UserError(f"{path}:{line}: task t2i must have an empty source_image, got {src_rel!r}")
        caption = None
        if rec["caption_dict"].strip():
            try:
                caption = json.loads(rec["caption_dict"])
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{line}: column caption_dict is not valid JSON ({e.msg})") from None
            if not isinstance(caption, dict):
                raise UserError(f"{path}:{line}: column caption_dict must be a JSON object")
        tgt, size = _check_image(path, line, "target_image", rec["target_image"].strip(), root, size, max_side)
        src = None
        if src_rel:
            src, size = _check_image(path, line, "source_image", src_rel, root, size, max_side)
        rows.append(Row(line, uid, task, rec["raw_task"].strip(), rec["prompt"].strip(), src, tgt, caption))
    if not rows:
        raise UserError(f"{path}: no data rows")
    for b in buckets or ():
        tasks = bucket_tasks(b)
        if not any(r.task in tasks for r in rows):
            found = sorted({r.task for r in rows})
            raise UserError(f"{path}: bucket {b!r} is empty (needs task {'/'.join(tasks)}; found {', '.join(found)})")
    return EditDataset(path, rows, size)


def export(bucket: str, n: int, seed: int, out, cfg: WorldConfig, overwrite: bool = False, progress=None) -> Path:
    """Render ``n`` examples of ``bucket`` as PNGs plus ``data.csv`` into ``out``. Written to a temporary folder
    and renamed at the end, so a failed export never leaves a half-written dataset or touches an existing one."""
    out = Path(out)
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    bucket_tasks(bucket)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        stream = WorldStream(cfg, bucket, seed)
        with open(tmp / "data.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for i in range(n):
                ex = stream.examples(1)[0]
                b = render_batch([ex], cfg)
                uid = f"{bucket}-{seed}-{i:06d}"
                tgt_rel = f"images/{uid}_target.png"
                Image.fromarray(b.target[0]).save(tmp / tgt_rel)
                src_rel = ""
                if ex.source is not None:
                    src_rel = f"images/{uid}_source.png"
                    Image.fromarray(b.source[0]).save(tmp / src_rel)
                w.writerow([uid, ex.task, ex.raw_task, ex.prompt, src_rel, tgt_rel, ex.caption_json()])
                if progress:
                    progress(1)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
