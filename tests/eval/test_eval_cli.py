"""``danceopd eval``: writes scores.json / scores.md / contact_sheet.png; bad arguments exit 2 with one line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from danceopd.cli import main


def test_cli_writes_three_files(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", "--model", "oracle", "--suite", "all", "--n", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    s = json.loads((out / "scores.json").read_text())
    for key in ("gedit", "geneval", "fid", "clip_score", "lpips", "n_samples", "seed", "judge_version", "model",
                "timings", "standard"):
        assert key in s
    assert set(s["gedit"]) >= {"subject_add", "subject_remove", "subject_replace", "color_alter",
                               "background_change", "style_change", "avg"}
    assert set(s["gedit"]["avg"]) == {"sc", "pq", "o"} and "overall" in s["geneval"]
    assert s["model"] == "oracle" and s["seed"] == 0 and s["n"] == 4
    md = (out / "scores.md").read_text()
    assert "| subj-add |" in md and "overall" in md
    with Image.open(out / "contact_sheet.png") as im:
        assert im.width > 300 and im.height > 300
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "scores.json", "scores.md"]
    # refuses a non-empty --out, accepts it with --overwrite
    capsys.readouterr()
    assert main(["eval", "--model", "noise", "--suite", "edit", "--n", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert main(["eval", "--model", "noise", "--suite", "edit", "--n", "1", "--out", str(out), "--overwrite",
                 "--no-progress"]) == 0
    assert json.loads((out / "scores.json").read_text())["model"] == "noise"


@pytest.mark.parametrize("args, needle", [
    (["--model", "oracle", "--suite", "video"], "--suite"),
    (["--model", "oracle", "--n", "0"], "--n"),
    (["--model", "oracle", "--resolution", "48"], "--resolution"),
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "degrade:9"], "degrade level"),
])
def test_cli_bad_args_exit_2_with_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    rc = main(["eval", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error:") and needle in err
    assert not out.exists()  # validated before any work
