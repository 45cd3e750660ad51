"""OmniEdit-style editing data -> the danceopd dataset CSV (``danceopd data convert-omniedit``).

Input rows carry the fields of the published OmniEdit datasets (TIGER-Lab/OmniEdit-Filtered-1.2M's card lists
``omni_edit_id, task, src_img, edited_img, edited_prompt_list, width, height, sc_score_1, sc_score_2,
sc_reasoning, pq_score, pq_reasoning, o_score``). Accepted inputs, all local:

- a ``.parquet`` file or a folder of them (image columns as ``{"bytes", "path"}`` structs, as datasets writes them);
- a ``.jsonl`` file or a folder of them (images as file paths relative to the JSONL file, or ``{"bytes"|"path"}``);
- a folder written by ``datasets``' ``save_to_disk`` (``state.json`` + ``*.arrow``; a ``DatasetDict`` folder takes
  every split).

Parquet and arrow inputs need ``pyarrow`` (``pip install 'danceopd[data]'``).

Mapping: ``task`` -> route bucket by the table ``TASK_BUCKETS`` (the seven OmniEdit task families; names are
compared lower-case with spaces and hyphens as underscores), then by keywords (``background``/``environment``/
``style`` -> ``global_edit``; object swap/removal/addition/attribute words -> ``local_edit``). ``--map task=bucket``
overrides or extends it (``bucket`` may be ``skip``). The prompt is the FIRST entry of ``edited_prompt_list``
(deterministic); the whole list, the raw task and the scores go to ``caption_dict``. Images are center-cropped
and resized to ``resolution`` x ``resolution`` (the trainers need one size), saved as RGB PNG.

Everything is validated before the output exists: first every row's fields, ids, prompts and tasks (no image
decoding), then images are decoded while writing into a temporary folder that only becomes ``--out`` when all
rows succeeded; the result is checked with the shared CSV loader.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

REQUIRED = ("omni_edit_id", "task", "src_img", "edited_img", "edited_prompt_list")
SCORES = ("sc_score_1", "sc_score_2", "pq_score", "o_score")
BUCKET_CHOICES = ("local_edit", "global_edit", "skip")

TASK_BUCKETS = {
    # object-level edits: only a region changes
    "swap": "local_edit", "object_swap": "local_edit", "object_replacement": "local_edit", "replace": "local_edit",
    "removal": "local_edit", "remove": "local_edit", "object_removal": "local_edit",
    "addition": "local_edit", "add": "local_edit", "object_addition": "local_edit",
    "attribute_modification": "local_edit", "attribute": "local_edit", "color_alteration": "local_edit",
    # whole-image edits
    "background_swap": "global_edit", "background_change": "global_edit", "background": "global_edit",
    "environment_change": "global_edit", "environment": "global_edit",
    "style_transfer": "global_edit", "style": "global_edit", "style_change": "global_edit",
}
_GLOBAL_WORDS = ("background", "environment", "style", "weather", "season")
_LOCAL_WORDS = ("swap", "replace", "remov", "add", "attribute", "color", "object")


def norm_task(task: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(task).strip().lower()).strip("_")


def bucket_for(task: str, overrides: dict[str, str]) -> str | None:
    t = norm_task(task)
    if t in overrides:
        return overrides[t]
    if t in TASK_BUCKETS:
        return TASK_BUCKETS[t]
    if any(w in t for w in _GLOBAL_WORDS):
        return "global_edit"
    if any(w in t for w in _LOCAL_WORDS):
        return "local_edit"
    return None


def parse_maps(maps: list[str]) -> dict[str, str]:
    out = {}
    for m in maps:
        task, sep, bucket = m.partition("=")
        if not sep or not task.strip() or bucket.strip() not in BUCKET_CHOICES:
            raise UserError(f"--map {m!r}: expected task=bucket with bucket one of {', '.join(BUCKET_CHOICES)}")
        out[norm_task(task)] = bucket.strip()
    return out


# ---- readers ------------------------------------------------------------------------------------------------------
def _need_pyarrow(what: str):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError(f"reading {what} needs pyarrow: pip install 'danceopd[data]'") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict, Path]]:
    _need_pyarrow("parquet")
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
        for batch in pf.iter_batches(batch_size=64):
            for row in batch.to_pylist():
                yield f"{path}", row, path.parent
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: unreadable parquet ({type(e).__name__}: {str(e)[:100]})") from None


def _arrow_rows(path: Path) -> Iterator[tuple[str, dict, Path]]:
    _need_pyarrow("a save_to_disk folder")
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as src:
            try:
                reader = pa.ipc.open_stream(src)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(src)
            for batch in reader:
                for row in batch.to_pylist():
                    yield f"{path}", row, path.parent
    except Exception as e:
        raise UserError(f"{path}: unreadable arrow file ({type(e).__name__}: {str(e)[:100]})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict, Path]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object per line")
            yield f"{path}:{n}", row, path.parent


def _saved_dataset_files(folder: Path) -> list[Path]:
    """Arrow files of a ``save_to_disk`` folder (a Dataset, or every split of a DatasetDict)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        return [p for s in splits for p in _saved_dataset_files(folder / s)]
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return [folder / f["filename"] for f in state.get("_data_files", [])]


def iter_rows(inp: Path) -> Iterator[tuple[str, dict, Path]]:
    """(where, row, base folder for relative image paths) for every input row."""
    inp = Path(inp)
    if not inp.exists():
        raise UserError(f"--input {inp}: not found")
    if inp.is_file():
        if inp.suffix == ".parquet":
            yield from _parquet_rows(inp)
        elif inp.suffix in (".jsonl", ".json"):
            yield from _jsonl_rows(inp)
        elif inp.suffix == ".arrow":
            yield from _arrow_rows(inp)
        else:
            raise UserError(f"--input {inp}: expected .parquet, .jsonl, .arrow or a folder")
        return
    if (inp / "state.json").is_file() or (inp / "dataset_dict.json").is_file():
        for p in _saved_dataset_files(inp):
            yield from _arrow_rows(p)
        return
    files = sorted(list(inp.rglob("*.parquet")) + list(inp.rglob("*.jsonl")))
    if not files:
        raise UserError(f"--input {inp}: no .parquet or .jsonl files and not a save_to_disk folder")
    for p in files:
        yield from (_parquet_rows(p) if p.suffix == ".parquet" else _jsonl_rows(p))


# ---- conversion ---------------------------------------------------------------------------------------------------
def _prompts(value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [str(v).strip() for v in value if isinstance(v, str) and v.strip()]


def _image_ref(value, where: str, col: str):
    if isinstance(value, dict):
        if value.get("bytes"):
            return ("bytes", value["bytes"])
        if value.get("path"):
            return ("path", value["path"])
    elif isinstance(value, (bytes, bytearray)):
        return ("bytes", bytes(value))
    elif isinstance(value, str) and value.strip():
        return ("path", value.strip())
    raise UserError(f"{where}: column {col} holds no image (expected bytes, a path or a {{bytes, path}} struct)")


def _load_image(ref, base: Path, where: str, col: str, resolution: int):
    from PIL import Image

    kind, val = ref
    try:
        if kind == "bytes":
            im = Image.open(io.BytesIO(val))
        else:
            p = Path(val)
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise UserError(f"{where}: column {col}: image file {p} not found")
            im = Image.open(p)
        with im:
            if max(im.size) > 8192:
                raise UserError(f"{where}: column {col}: image is {im.size[0]}x{im.size[1]}, over 8192 px")
            im = im.convert("RGB")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where}: column {col}: unreadable image ({type(e).__name__}: {str(e)[:80]})") from None
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((resolution, resolution), Image.LANCZOS)


def _uid(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._") or "row"


def convert_omniedit(inp, out, resolution: int = 1024, maps: list[str] = (), limit: int | None = None,
                     overwrite: bool = False, progress=None) -> dict:
    """Convert; returns {"rows": n, "local_edit": n, "global_edit": n, "skipped": n}. ``progress(total)`` is
    called once per written row."""
    from ..world.dataset import COLUMNS, load_csv

    out = Path(out)
    if resolution < 16 or resolution > 4096:
        raise UserError(f"--resolution must be in [16, 4096], got {resolution}")
    overrides = parse_maps(list(maps))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")

    # pass 1: fields, ids, prompts, tasks (no image decoding)
    plan, seen, unmapped = [], {}, {}
    counts = {"local_edit": 0, "global_edit": 0, "skipped": 0}
    for where, row, base in iter_rows(inp):
        if limit is not None and len(plan) >= limit:
            break
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}; found {', '.join(sorted(row))}")
        rid = str(row["omni_edit_id"]).strip()
        if not rid:
            raise UserError(f"{where}: omni_edit_id is empty")
        uid = _uid(rid)
        if uid in seen:
            raise UserError(f"{where}: duplicate omni_edit_id {rid!r} (first at {seen[uid]})")
        seen[uid] = where
        prompts = _prompts(row["edited_prompt_list"])
        if not prompts:
            raise UserError(f"{where}: edited_prompt_list has no instruction")
        task = str(row["task"] or "").strip()
        bucket = bucket_for(task, overrides)
        if bucket is None:
            unmapped.setdefault(task, where)
            continue
        if bucket == "skip":
            counts["skipped"] += 1
            continue
        src = _image_ref(row["src_img"], where, "src_img")
        tgt = _image_ref(row["edited_img"], where, "edited_img")
        caption = {"source": "omniedit", "omni_edit_id": rid, "task": task, "prompts": prompts,
                   **{k: row[k] for k in SCORES if k in row and row[k] is not None}}
        plan.append((where, uid, bucket, task, prompts[0], src, tgt, base, caption))
        counts[bucket] += 1
    if unmapped:
        tasks = ", ".join(f"{t!r} (e.g. {w})" for t, w in list(unmapped.items())[:5])
        raise UserError(f"unmapped task(s): {tasks}; add --map <task>=local_edit|global_edit|skip")
    if not plan:
        raise UserError(f"--input {inp}: no rows to convert")

    # pass 2: decode, write into a temporary folder, validate, then move into place
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        with open(tmp / "data.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for where, uid, bucket, task, prompt, src, tgt, base, caption in plan:
                s_rel, t_rel = f"images/{uid}_source.png", f"images/{uid}_target.png"
                _load_image(src, base, where, "src_img", resolution).save(tmp / s_rel)
                _load_image(tgt, base, where, "edited_img", resolution).save(tmp / t_rel)
                w.writerow([uid, bucket, task, prompt, s_rel, t_rel, json.dumps(caption, sort_keys=True)])
                if progress:
                    progress(len(plan))
        load_csv(tmp / "data.csv", resolution=resolution)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"rows": len(plan), **counts}
