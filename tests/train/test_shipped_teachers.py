"""Shipped teachers (danceopd/assets/teachers) load by name, match their manifest sha256, and reproduce the scores
recorded in the manifest (a small fast check here; the full-n scores in the slow tier)."""

import hashlib
import json
from pathlib import Path

import pytest

from danceopd.backends.registry import ASSET_DIR, load_backend

MANIFEST = ASSET_DIR / "manifest.json"
REPO = Path(__file__).resolve().parents[2]
ENTRIES = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def _close(a, b, tol):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    return a == b  # None (a suite that was not run) must stay None


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_shipped_teacher_loads_and_matches_manifest(name):
    e = ENTRIES[name]
    path = ASSET_DIR / e["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
    be = load_backend(f"world:{name}")
    assert sum(p.numel() for p in be.net.parameters()) == e["params"]
    assert be.is_edit == (name != "t2i")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_shipped_teacher_config_is_its_recorded_command(name):
    """The config a shipped teacher was trained with equals what its manifest command loads today, so the command
    reproduces it (an edit teacher's init is the shipped base, by name)."""
    import dataclasses
    import shlex

    from danceopd.config import load_config
    from danceopd.train.sft import SFTConfig

    e = ENTRIES[name]
    args = shlex.split(e["command"])
    path = REPO / args[args.index("--config") + 1]
    cfg = json.loads(json.dumps(dataclasses.asdict(load_config(SFTConfig, path))))
    assert cfg == e["config"]


@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items() if "check" in e))
def test_shipped_teacher_reproduces_check_scores(name):
    from danceopd.eval.generators import resolve_generator
    from danceopd.eval.suite import evaluate

    e = ENTRIES[name]
    c = e["check"]
    got = evaluate(resolve_generator(f"world:{name}", 32), suite=e.get("suite", "all"), seed=c["seed"], n=c["n"],
                   progress=False)
    assert _close(c["scores"]["geneval"], got["geneval"], 1e-6) and _close(c["scores"]["gedit"], got["gedit"], 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items() if "scores" in e))
def test_shipped_teacher_reproduces_manifest_scores(name):
    from danceopd.eval.generators import resolve_generator
    from danceopd.eval.suite import evaluate

    e = ENTRIES[name]
    kw = {} if e["eval"]["n"] is None else {"n": e["eval"]["n"]}
    got = evaluate(resolve_generator(f"world:{name}", 32), suite=e.get("suite", "all"), seed=e["eval"]["seed"],
                   progress=False, **kw)
    assert abs(got["geneval"]["overall"] - e["scores"]["geneval"]["overall"]) <= 0.02
    if e["scores"]["gedit"] is not None:
        assert abs(got["gedit"]["avg"]["o"] - e["scores"]["gedit"]["avg"]["o"]) <= 0.2
