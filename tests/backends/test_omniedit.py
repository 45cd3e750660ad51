"""``danceopd data convert-omniedit``: OmniEdit-style rows (jsonl with image paths, parquet / save_to_disk arrow with
image structs) -> a validated dataset CSV; task mapping and overrides; errors are one line and leave no output."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from danceopd.cli import main
from danceopd.data.omniedit import bucket_for
from danceopd.world.dataset import load_csv

TASKS = ["swap", "removal", "addition", "attribute_modification", "background_swap", "environment",
         "style"]


def _png(seed: int, size=(48, 40)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n=7, tasks=TASKS):
    return [{"omni_edit_id": f"oe/{i}", "task": tasks[i % len(tasks)], "edited_prompt_list": [f"edit {i}", "alt"],
             "width": 48, "height": 40, "o_score": 7.5, "sc_score_1": 8} for i in range(n)]


def _jsonl(tmp_path, rows):
    (tmp_path / "img").mkdir(exist_ok=True)
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, r in enumerate(rows):
            for col, seed in (("src_img", 2 * i), ("edited_img", 2 * i + 1)):
                (tmp_path / "img" / f"{col}{i}.png").write_bytes(_png(seed))
                r[col] = f"img/{col}{i}.png"
            f.write(json.dumps(r) + "\n")
    return tmp_path / "in.jsonl"


def test_default_task_table():
    got = {t: bucket_for(t, {}) for t in TASKS + ["Object Swap", "style-transfer", "background change"]}
    assert got == {"swap": "local_edit", "removal": "local_edit", "addition": "local_edit",
                   "attribute_modification": "local_edit", "background_swap": "global_edit",
                   "environment": "global_edit", "style": "global_edit", "Object Swap": "local_edit",
                   "style-transfer": "global_edit", "background change": "global_edit"}
    assert bucket_for("mystery", {}) is None


def test_jsonl_convert_validates_and_loads(tmp_path):
    inp = _jsonl(tmp_path, _rows())
    out = tmp_path / "out"
    assert main(["data", "convert-omniedit", "--input", inp, "--out", out, "--resolution", "32"]) == 0
    ds = load_csv(out / "data.csv", buckets=["local_edit", "global_edit"], resolution=32)
    assert len(ds.rows) == 7 and {r.task for r in ds.rows} == {"local_edit", "global_edit"}
    r0 = ds.rows[0]
    assert r0.uid == "oe_0" and r0.prompt == "edit 0" and r0.raw_task == "swap"
    assert r0.caption["prompts"] == ["edit 0", "alt"] and r0.caption["o_score"] == 7.5
    src, tgt = ds.load(r0)
    assert src.shape == tgt.shape == (32, 32, 3)


def test_map_override_skip_and_limit(tmp_path):
    inp = _jsonl(tmp_path, _rows())
    out = tmp_path / "out"
    assert main(["data", "convert-omniedit", "--input", inp, "--out", out, "--resolution", "16",
                 "--map", "swap=global_edit", "--map", "style=skip", "--limit", "6"]) == 0
    ds = load_csv(out / "data.csv")
    tasks = {r.raw_task: r.task for r in ds.rows}
    assert tasks["swap"] == "global_edit" and "style" not in tasks and len(ds.rows) == 6   # limit: written rows


@pytest.mark.parametrize("bad, message", [
    ("unmapped", "unmapped task"),
    ("missing", "missing field"),
    ("noprompt", "edited_prompt_list has no instruction"),
    ("badimage", "unreadable image"),
    ("dup", "duplicate omni_edit_id"),
])
def test_errors_are_one_line_and_write_nothing(tmp_path, capsys, bad, message):
    rows = _rows(3)
    inp = _jsonl(tmp_path, rows)
    lines = [json.loads(x) for x in inp.read_text().splitlines()]
    if bad == "unmapped":
        lines[1]["task"] = "teleport"
    elif bad == "missing":
        del lines[2]["edited_img"]
    elif bad == "noprompt":
        lines[0]["edited_prompt_list"] = []
    elif bad == "badimage":
        (tmp_path / lines[2]["src_img"]).write_bytes(b"not a png")
    else:
        lines[2]["omni_edit_id"] = lines[0]["omni_edit_id"]
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    assert main(["data", "convert-omniedit", "--input", inp, "--out", out, "--resolution", "16"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_bad_map_flag(tmp_path, capsys):
    inp = _jsonl(tmp_path, _rows(1))
    assert main(["data", "convert-omniedit", "--input", inp, "--out", tmp_path / "o", "--map", "swap=edit"]) == 2
    assert "--map" in capsys.readouterr().err


def _table(rows):
    import pyarrow as pa

    img = {"bytes": None, "path": None}
    cols = {k: [r.get(k) for r in rows] for k in ("omni_edit_id", "task", "edited_prompt_list", "o_score")}
    cols["src_img"] = [{**img, "bytes": _png(2 * i)} for i in range(len(rows))]
    cols["edited_img"] = [{**img, "bytes": _png(2 * i + 1, (30, 50))} for i in range(len(rows))]
    return pa.table(cols)


def test_parquet_and_save_to_disk_inputs(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _rows(4)
    (tmp_path / "pq").mkdir()
    pq.write_table(_table(rows[:2]), tmp_path / "pq" / "train-00000.parquet")
    pq.write_table(_table([{**r, "omni_edit_id": r["omni_edit_id"] + "b"} for r in rows[2:]]),
                   tmp_path / "pq" / "train-00001.parquet")
    assert main(["data", "convert-omniedit", "--input", tmp_path / "pq", "--out", tmp_path / "o1",
                 "--resolution", "16"]) == 0
    assert len(load_csv(tmp_path / "o1" / "data.csv").rows) == 4
    # a datasets.save_to_disk folder: state.json + arrow stream files
    d = tmp_path / "saved"
    d.mkdir()
    table = _table(rows)
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    assert main(["data", "convert-omniedit", "--input", d, "--out", tmp_path / "o2", "--resolution", "16"]) == 0
    ds = load_csv(tmp_path / "o2" / "data.csv", resolution=16)
    assert [r.uid for r in ds.rows] == ["oe_0", "oe_1", "oe_2", "oe_3"]
