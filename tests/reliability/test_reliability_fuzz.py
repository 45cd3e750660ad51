"""Hostile input, property-based: every generated case must exit 2 with one line (no traceback) and leave the
output folder exactly as it was. Sized for the fast tier; `HYPOTHESIS_PROFILE=large` runs 10x more cases."""

import copy
import csv
import io
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from danceopd.backends.registry import ASSET_DIR
from danceopd.cli import main
from danceopd.world import DEFAULT_WORLD
from danceopd.world.dataset import COLUMNS, export

N = 100 if os.environ.get("HYPOTHESIS_PROFILE") == "large" else 10
SET = settings(max_examples=N * 8, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID_SFT = {
    "name": "fuzz", "seed": 0,
    "model": {"channels": [8, 16], "attn_levels": [1], "text_dim": 16, "text_layers": 1, "emb_dim": 32},
    "data": {"bucket": "t2i", "resolution": 32},
    "optim": {"lr": 0.001, "warmup_steps": 2},
    "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1},
}


def _snapshot(d: Path):
    if not d.exists():
        return None
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _expect_clean_failure(capsys, args, out: Path):
    before = _snapshot(out)
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert _snapshot(out) == before
    return lines[0]


# ---- configs ---------------------------------------------------------------------------------------------------
SECTIONS = ["model", "data", "optim", "train", "lora", "sampling"]
BAD_VALUES = {
    "train.steps": [0, -5, "many", 1.5, None, [1]],
    "train.batch_size": [0, "big", -1],
    "train.mixed_precision": ["fp8", 3],
    "train.nan_policy": ["ignore"],
    "optim.lr": [0, -1e-3, 5.0, "fast"],
    "data.bucket": ["video", 7, ""],
    "data.resolution": [48, 0, "32px"],
    "data.text_dropout": [1.5, -0.1],
    "model.channels": [[7, 16], "wide", [0]],
    "sampling.steps": [0, -2],
    "lora.rank": [0],
    "init": ["world:does_not_exist", "/no/such/model.safetensors"],
    "data.csv": ["/no/such/data.csv"],
}


@st.composite
def bad_config(draw):
    cfg = copy.deepcopy(VALID_SFT)
    kind = draw(st.sampled_from(["unknown_key", "unknown_section", "bad_value", "not_mapping", "yaml_syntax"]))
    if kind == "unknown_key":
        sec = draw(st.sampled_from(SECTIONS))
        key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=12).filter(
            lambda k: k not in {"steps", "lr", "bucket", "csv", "rank", "alpha", "seed", "name", "init", "shift",
                                "enabled", "dropout", "targets", "threads", "channels", "beta1", "beta2"}))
        cfg.setdefault(sec, {})[key] = draw(st.integers())
        return yaml.safe_dump(cfg)
    if kind == "unknown_section":
        cfg[draw(st.sampled_from(["optimizer", "trainer", "dataset", "models"]))] = {"x": 1}
        return yaml.safe_dump(cfg)
    if kind == "bad_value":
        path = draw(st.sampled_from(sorted(BAD_VALUES)))
        val = draw(st.sampled_from(BAD_VALUES[path]))
        sec, _, key = path.partition(".")
        if key:
            cfg.setdefault(sec, {})[key] = val
        else:
            cfg[sec] = val
        return yaml.safe_dump(cfg)
    if kind == "not_mapping":
        return draw(st.sampled_from(["- a\n- b\n", "42\n", "just text\n"]))
    return draw(st.sampled_from(["train: {steps: 3\n", "a: b: c\n", "train:\n  - x\n y: 1\n", "\t- bad\n"]))


@given(text=bad_config())
@SET
def test_fuzz_train_configs(tmp_path, capsys, text):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    _expect_clean_failure(capsys, ["train", "--config", cfg, "--out", out], out)


@given(ov=st.sampled_from([
    "train.steps=zero", "train.stepz=3", "optim=5", "data.bucket=none", "=3", "novalue", "train.batch_size=-2",
    "lora.enabled=maybe", "model.channels=[3]", "sampling.shift=0",
    "data.category_weights={subject_add: 2}", "data.category_weights={position: -1}", "grow.text_layers=3",
    "model.self_attn_levels=[5]",
    "data.category_weights={position: 0, color_attr: 0, single_object: 0, two_object: 0, counting: 0, colors: 0}",
]))
@SET
def test_fuzz_set_overrides(tmp_path, capsys, ov):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(VALID_SFT), encoding="utf-8")
    out = tmp_path / "existing"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("precious")
    _expect_clean_failure(capsys, ["train", "--config", cfg, "--out", out, "--set", ov], out)


# ---- CSV rows and image bytes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("fz") / "ds"
    export("edit", 6, 0, d, DEFAULT_WORLD)
    return d


HOSTILE_CELLS = {
    "uid": ["", "   "],
    "task": ["inpaint", "", "T2I", "edit"],
    "prompt": ["", "  "],
    "source_image": ["", "../x.png", "/etc/passwd", "images/none.png", "~/a.png", "images/../../x.png"],
    "target_image": ["", "../../../etc/shadow", "/abs.png", "missing/dir.png", "images"],
    "caption_dict": ["{", "[]", "nan", "{\"a\": }", "42"],
}


def _png_bytes(size=(32, 32), mode="RGB"):
    b = io.BytesIO()
    Image.new(mode, size).save(b, format="PNG")
    return b.getvalue()


@st.composite
def hostile_dataset_change(draw):
    kind = draw(st.sampled_from(["cell", "image_bytes", "image_kind", "encoding", "columns", "dup_uid"]))
    row = draw(st.integers(0, 5))
    if kind == "cell":
        col = draw(st.sampled_from(sorted(HOSTILE_CELLS)))
        return kind, row, (col, draw(st.sampled_from(HOSTILE_CELLS[col])))
    if kind == "image_bytes":
        return kind, row, draw(st.one_of(
            st.binary(min_size=0, max_size=200),
            st.integers(1, 60).map(lambda n: _png_bytes()[:n]),  # truncated PNG
        ))
    if kind == "image_kind":
        return kind, row, draw(st.sampled_from([((32, 32), "L"), ((32, 32), "RGBA"), ((33, 32), "RGB"),
                                                ((64, 64), "RGB"), ((5000, 2), "RGB"), ((32, 32), "P")]))
    if kind == "encoding":
        return kind, row, draw(st.sampled_from([b"\xff\xfe", b"\x80abc", b"caf\xe9"]))
    if kind == "columns":
        return kind, row, draw(st.sampled_from(COLUMNS))
    return kind, row, None


def _apply(d: Path, change):
    kind, row, arg = change
    csv_path = d / "data.csv"
    rows = list(csv.reader(open(csv_path, encoding="utf-8", newline="")))
    data_row = rows[row + 1]
    if kind == "cell":
        col, val = arg
        data_row[COLUMNS.index(col)] = val
        if col == "source_image" and val == "" and data_row[1] == "t2i":
            data_row[1] = "local_edit"
    elif kind == "image_bytes":
        (d / data_row[COLUMNS.index("target_image")]).write_bytes(arg)
    elif kind == "image_kind":
        size, mode = arg
        Image.new(mode, size).save(d / data_row[COLUMNS.index("source_image")])
    elif kind == "dup_uid":
        data_row[0] = rows[1 + (row + 1) % 6][0]
    if kind == "columns":
        i = COLUMNS.index(arg)
        rows = [r[:i] + r[i + 1:] for r in rows]
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    if kind == "encoding":
        raw = csv_path.read_bytes()
        cut = raw.index(b"\n", raw.index(b"\n") + 1) + 5
        csv_path.write_bytes(raw[:cut] + arg + raw[cut:])


@given(change=hostile_dataset_change())
@SET
def test_fuzz_dataset_csv_and_images(tmp_path, capsys, dataset, change):
    d = tmp_path / "ds"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(dataset, d)
    _apply(d, change)
    msg = _expect_clean_failure(capsys, ["world", "validate", d / "data.csv", "--resolution", "32"], tmp_path / "o")
    assert "data.csv" in msg
    # the same file handed to a trainer fails identically before any run folder appears
    cfg = tmp_path / "cfg.yaml"
    c = copy.deepcopy(VALID_SFT)
    c["data"] = {"bucket": "edit", "resolution": 32, "csv": str(d / "data.csv")}
    c["init"] = None
    cfg.write_text(yaml.safe_dump(c), encoding="utf-8")
    out = tmp_path / "run"
    _expect_clean_failure(capsys, ["train", "--config", cfg, "--out", out], out)


@given(data=st.one_of(st.binary(max_size=300), st.integers(1, 80).map(lambda n: _png_bytes()[:n])))
@SET
def test_fuzz_edit_image_bytes(tmp_path, capsys, data):
    img = tmp_path / "src.png"
    img.write_bytes(data)
    out = tmp_path / "out.png"
    args = ["edit", "--model", "world:edit", "--image", img, "--instruction", "invert the colors", "--out", out]
    if _decodes(data) and (ASSET_DIR / "edit.safetensors").is_file():
        # a PNG cut only after its image data (e.g. without IEND) still decodes completely: editing it is right
        assert main([str(a) for a in args]) == 0 and out.is_file()
        return
    _expect_clean_failure(capsys, args, out)


def _decodes(data: bytes) -> bool:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size == (32, 32) and im.mode == "RGB"
    except Exception:
        return False


def test_debug_flag_shows_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bogus: 1\n")
    with pytest.raises(Exception, match="unknown key 'bogus'"):
        main(["--debug", "train", "--config", str(cfg)])
