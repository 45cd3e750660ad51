import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from danceopd.errors import UserError
from danceopd.world import DEFAULT_WORLD, check_constraints
from danceopd.world.dataset import COLUMNS, export, load_csv
from danceopd.world.sampler import Example


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "edit"
    export("edit", 12, 0, out, DEFAULT_WORLD)
    t2i = tmp_path_factory.mktemp("ds") / "t2i"
    export("t2i", 6, 1, t2i, DEFAULT_WORLD)
    return out, t2i


def _copy(ds, tmp_path):
    dst = tmp_path / "d"
    shutil.copytree(ds, dst)
    return dst


def _rewrite(csv_path, fn):
    rows = list(csv.reader(open(csv_path, encoding="utf-8", newline="")))
    rows = fn(rows)
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)


def test_export_schema_and_roundtrip(ds_dir):
    out, t2i = ds_dir
    rows = list(csv.DictReader(open(out / "data.csv", encoding="utf-8")))
    assert tuple(rows[0].keys()) == COLUMNS and len(rows) == 12
    ds = load_csv(out / "data.csv", buckets=["local_edit", "global_edit", "edit"], resolution=32)
    assert ds.size == (32, 32)
    for r in ds.rows:
        ex = Example.from_caption(r.task, r.prompt, r.caption)
        src, tgt = ds.load(r)
        from danceopd.world import render

        assert np.array_equal(tgt, render(ex.target, DEFAULT_WORLD))
        assert np.array_equal(src, render(ex.source, DEFAULT_WORLD))
    ds2 = load_csv(t2i / "data.csv", buckets=["t2i"])
    for r in ds2.rows:
        assert r.source_image is None
        ex = Example.from_caption(r.task, r.prompt, r.caption)
        assert check_constraints(ex.constraints, ex.target.layout())


def test_export_refuses_existing_folder(ds_dir, tmp_path):
    out, _ = ds_dir
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(UserError, match="not empty"):
        export("edit", 3, 5, out, DEFAULT_WORLD)
    assert sorted(p.name for p in out.rglob("*")) == before


def _expect(path, pattern, **kw):
    with pytest.raises(UserError) as e:
        load_csv(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert pattern in msg, msg
    return msg


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.csv", "not found")


def test_not_utf8(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    raw = (d / "data.csv").read_bytes()
    (d / "data.csv").write_bytes(raw.replace(b"remove", b"rem\xffove", 1).replace(b"add", b"a\xffdd", 1))
    _expect(d / "data.csv", "not UTF-8")


def test_missing_columns(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    _rewrite(d / "data.csv", lambda rows: [r[:-1] for r in rows])
    _expect(d / "data.csv", "missing column(s) caption_dict")


@pytest.mark.parametrize(
    "col,value,pattern",
    [
        ("task", "inpaint", "unknown task 'inpaint'"),
        ("prompt", "  ", "prompt is empty"),
        ("uid", "", "uid is empty"),
        ("target_image", "images/missing.png", "not found"),
        ("target_image", "../outside.png", "escapes"),
        ("target_image", "/etc/passwd", "must be relative"),
        ("source_image", "", "needs a source_image"),
        ("caption_dict", "{not json", "not valid JSON"),
        ("caption_dict", "[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_row_values(ds_dir, tmp_path, col, value, pattern):
    d = _copy(ds_dir[0], tmp_path)
    idx = COLUMNS.index(col)

    def edit(rows):
        rows[3][idx] = value
        return rows

    _rewrite(d / "data.csv", edit)
    msg = _expect(d / "data.csv", pattern)
    assert ":4:" in msg and (col in msg or col in ("task", "caption_dict", "source_image"))


def test_duplicate_uid(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)

    def edit(rows):
        rows[5][0] = rows[2][0]
        return rows

    _rewrite(d / "data.csv", edit)
    _expect(d / "data.csv", "duplicate uid")


def _first_image(d, col="target_image"):
    rows = list(csv.DictReader(open(d / "data.csv", encoding="utf-8")))
    return d / rows[0][col]


def test_truncated_image(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    p = _first_image(d)
    p.write_bytes(p.read_bytes()[:40])
    _expect(d / "data.csv", "unreadable")


def test_not_an_image(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    _first_image(d).write_bytes(b"hello world, not a png")
    _expect(d / "data.csv", "unreadable")


def test_wrong_mode(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    p = _first_image(d)
    Image.open(p).convert("L").save(p)
    _expect(d / "data.csv", "mode L, expected RGB")


def test_wrong_size(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    p = _first_image(d, "source_image")
    Image.new("RGB", (40, 32)).save(p)
    _expect(d / "data.csv", "40x32, expected 32x32")
    _expect(d / "data.csv", "expected 64x64", resolution=64)


def test_enormous_image(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    Image.new("RGB", (5000, 8)).save(_first_image(d))
    _expect(d / "data.csv", "larger than the 4096 px limit")


def test_empty_bucket(ds_dir):
    _expect(ds_dir[1] / "data.csv", "bucket 'edit' is empty", buckets=["edit"])


def test_no_rows(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
    _expect(p, "no data rows")


def test_wrong_field_count(ds_dir, tmp_path):
    d = _copy(ds_dir[0], tmp_path)
    with open(d / "data.csv", "a", encoding="utf-8") as f:
        f.write("x,t2i\n")
    _expect(d / "data.csv", "wrong number of fields")


def test_cli_errors_one_line_exit_2(ds_dir, tmp_path, capsys):
    from danceopd.cli import main

    d = _copy(ds_dir[0], tmp_path)
    _rewrite(d / "data.csv", lambda rows: [*rows[:2], [rows[2][0], "bogus", *rows[2][2:]]])
    rc = main(["world", "validate", str(d / "data.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert main(["world", "validate", str(ds_dir[0] / "data.csv"), "--bucket", "edit"]) == 0
    assert main(["world", "export", "--bucket", "nope", "--n", "2", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_cli_preview_and_export(tmp_path, capsys):
    from danceopd.cli import main

    assert main(["world", "preview", "--out", str(tmp_path / "g.png"), "--seed", "1"]) == 0
    im = Image.open(tmp_path / "g.png")
    assert im.width > 300 and im.height > 600
    assert main(["world", "export", "--bucket", "t2i", "--n", "3", "--out", str(tmp_path / "e")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e" / "data.csv", encoding="utf-8")))
    assert [r["task"] for r in rows] == ["t2i"] * 3
    assert all(json.loads(r["caption_dict"])["constraints"] for r in rows)
    assert main(["--help"]) == 0 and main(["world", "export", "--help"]) == 0


def test_cli_usage_errors_exit_2_without_traceback(capsys):
    from danceopd.cli import main

    assert main(["world", "export", "--bucket", "t2i"]) == 2  # missing --n / --out
    assert main(["world", "export", "--bucket", "t2i", "--n", "abc", "--out", "x"]) == 2
    assert main(["no-such-command"]) == 2
    assert "Traceback" not in capsys.readouterr().err
