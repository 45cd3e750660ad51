"""Every README command runs as written on a fresh clone after the two set-up commands (scripts/check_readme.py):
all are checked statically and the seconds-long ones run here; the minutes-long ones run in the slow tier."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts" / "check_readme.py")
check_readme = sys.modules["check_readme"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_readme)


def test_every_readme_command_is_found_and_parses():
    cmds = check_readme.readme_commands(ROOT / "README.md")
    texts = [c.text for c in cmds]
    assert any("world preview" in t for t in texts) and any(t.startswith("accelerate launch") for t in texts)
    assert any("danceopd demo" in t for t in texts)
    bad = [(c.text, err) for c in cmds if (err := check_readme.static_check(c))]
    assert not bad


def test_static_check_catches_what_would_fail(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```bash\ndanceopd sample --modle world:t2i --out a.png\n"
                      "danceopd distill --config configs/world/nope.yaml --out r\n"
                      "danceopd distill --config configs/world/A_danceopd.yaml --set train.stepz=1 --out r\n"
                      "python scripts/nope.py\nmake nope\n```\nInline: `danceopd evaluate --model x`.\n")
    errs = [check_readme.static_check(c) for c in check_readme.readme_commands(readme)]
    assert "No such option: --modle" in errs[0] and "does not exist" in errs[1] and "'stepz'" in errs[2]
    assert "does not exist" in errs[3] and "no make target" in errs[4] and "No such command" in errs[5]


def test_cheap_readme_commands_run_as_written(tmp_path, capsys):
    assert check_readme.main(["--tier", "cheap", "--workdir", str(tmp_path)]) == 0, capsys.readouterr().err
    assert (tmp_path / "b.png").is_file() and (tmp_path / "data" / "edit" / "data.csv").is_file()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_slow_readme_commands_run_as_written(tmp_path, capsys):
    """After `make demo` (its reproduction, ~7.5 min): reproduce (cached), eval of runs/quick/A_danceopd, distill
    (400 steps), the benchmarks — about 30 minutes on 2 cores."""
    assert check_readme.main(["--tier", "slow", "--workdir", str(tmp_path)]) == 0, capsys.readouterr().err
