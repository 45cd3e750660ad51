"""Parked cells: an unfinished cell's newest checkpoint, kept in the publish folder, resumes on another machine to
the same student as an uninterrupted run (real training and evaluation of tiny models)."""

import json
import shutil
import subprocess

import pytest
from tinycfg import make_tiny_teachers

from danceopd.report import publish, runner
from danceopd.report.park import park, parked_dir, unpark
from danceopd.report.plan import quick_plan


class Interrupted(Exception):
    pass


def _cell():
    c = quick_plan()[-1]                                     # A/danceopd/s0
    c.overrides += ["train.steps=3", "train.batch_size=2", "rollout.steps=2", "train.checkpoint_every=1",
                    "train.threads=1", "train.log_every=1"]
    c.curve, c.curve_test, c.eval_n, c.curve_n = [1, 2], True, 1, 1
    return c


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def test_a_parked_cell_resumes_on_a_fresh_machine_to_the_same_student(tmp_path, monkeypatch):
    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}
    straight = runner.run_plan([_cell()], tmp_path / "straight", tmap)[_cell().id]

    repo = tmp_path / "repo"                                  # the publish folder lives in a git repository
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@t")
    _git(repo, "config", "user.name", "t")
    (repo / "README").write_text("x")
    _git(repo, "add", "README")
    _git(repo, "commit", "-qm", "init")
    pub = publish.Publisher(repo / "results", commit=True)

    # machine 1: interrupted while scoring step 2 (one curve point scored, checkpoint at step 2)
    real, calls = runner.evaluate_model, []

    def flaky(*a, **k):
        calls.append(a)
        if len(calls) == 3:
            raise Interrupted
        return real(*a, **k)

    monkeypatch.setattr(runner, "evaluate_model", flaky)
    with pytest.raises(Interrupted):
        runner.run_plan([_cell()], tmp_path / "m1", tmap, publisher=pub)
    monkeypatch.setattr(runner, "evaluate_model", real)
    parked = pub.park([_cell()], tmp_path / "m1")
    assert [(c.id, s) for c, s in parked] == [(_cell().id, 2)]
    p = parked_dir(_cell(), pub.dest)
    rec = json.loads((p / "cell.json").read_text())
    assert rec["key"] == _cell().key() and [q["step"] for q in rec["curve"]] == [1]
    assert _git(repo, "ls-files", str(p))                    # committed
    assert "park A/danceopd/s0 at step 2" in _git(repo, "log", "-1", "--format=%s")

    # a parked folder under another key (a changed computation) is never resumed
    other = _cell()
    other.overrides.append("query.bias=mid_t")
    (tmp_path / "o").mkdir()
    assert unpark(other, tmp_path / "o" / "cells" / _cell().dirname, pub.dest) is None

    # a machine that stopped earlier (its newest checkpoint at step 1) never parks over the newer parked state,
    # and resuming there takes the parked checkpoint, replacing its older run
    m3 = tmp_path / "m3" / "cells" / _cell().dirname
    shutil.copytree(tmp_path / "m1" / "cells" / _cell().dirname, m3)
    shutil.rmtree(m3 / "run" / "checkpoints" / "checkpoint-00000002")
    assert (m3 / "run" / "checkpoints" / "checkpoint-00000001").is_dir()
    assert park([_cell()], tmp_path / "m3", pub.dest) == []
    assert json.loads((p / "cell.json").read_text())["parked_step"] == 2
    got = unpark(_cell(), m3, pub.dest)
    assert got["parked_step"] == 2 and got["replaced_local_step"] == 1
    assert sorted(q.name for q in (m3 / "run" / "checkpoints").iterdir()) == ["checkpoint-00000002"]
    assert unpark(_cell(), m3, pub.dest) is None             # level with the parked state: nothing to take

    # machine 2: nothing of the cell in its run folder -> resumes the parked checkpoint, same student; the parked
    # part ran on a GPU (as on a lent machine): the record names both devices
    rec["device"] = "cuda (NVIDIA H200)"
    (p / "cell.json").write_text(json.dumps(rec))
    logs = []
    calls.clear()                                            # stopped at once, at its first evaluation: the resumed
    monkeypatch.setattr(runner, "evaluate_model", flaky)     # record is on disk already (a second park keeps it)
    calls.extend([None, None])
    with pytest.raises(Interrupted):
        runner.run_plan([_cell()], tmp_path / "m2", tmap, publisher=pub, log=logs.append)
    monkeypatch.setattr(runner, "evaluate_model", real)
    local = json.loads((tmp_path / "m2" / "cells" / _cell().dirname / "cell.json").read_text())
    assert local["key"] == _cell().key() and [q["step"] for q in local["curve"]] == [1]
    rec2 = runner.run_plan([_cell()], tmp_path / "m2", tmap, publisher=pub, log=logs.append)[_cell().id]
    assert any("parked checkpoint (step 2" in m for m in logs)
    assert [q["step"] for q in rec2["curve"]] == [1, 2]
    assert rec2["device"] == "cuda (NVIDIA H200), then cpu" and rec["device"] != runner.device_name()
    assert rec2["scores"]["items"] == straight["scores"]["items"]
    assert [q["test"]["items"] for q in rec2["curve"]] == [q["test"]["items"] for q in straight["curve"]]
    for k in ("gedit", "geneval", "lpips"):                  # the point scored on machine 1, kept
        assert rec2["curve"][0]["scores"][k] == straight["curve"][0]["scores"][k]
    # finished and published: the parked folder is gone, its deletion committed with the cell
    assert not p.exists() and not _git(repo, "ls-files", str(p))
    assert _git(repo, "status", "--porcelain", "--", str(repo / "results")) == ""
    assert park([_cell()], tmp_path / "m2", pub.dest) == []   # a finished cell is never parked


def test_a_curve_point_the_run_has_passed_is_skipped_not_scored_on_a_later_student(tmp_path):
    """A record that misses a point its run has trained past (a stale record next to a newer checkpoint) must not
    score the later student under the earlier step (it did: the point 4000 of B/danceopd/s0/extend=6000 was the
    student at step 4700); and a distill run never resumes to fewer steps than its checkpoint."""
    from danceopd.config import load_config
    from danceopd.errors import UserError
    from danceopd.report.cell import CONFIG_DIR
    from danceopd.train.distill import DistillConfig, train_distill

    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}
    straight = runner.run_plan([_cell()], tmp_path / "straight", tmap)[_cell().id]
    d = tmp_path / "m" / "cells" / _cell().dirname
    shutil.copytree(tmp_path / "straight" / "cells" / _cell().dirname, d)
    shutil.rmtree(d / "run" / "checkpoints" / "checkpoint-00000003")
    (d / "run" / "final.json").unlink()
    rec = json.loads((d / "cell.json").read_text())
    rec.update(status="running", curve=[])                   # the record lost both points; the run is at step 2
    (d / "cell.json").write_text(json.dumps(rec))
    logs = []
    got = runner.run_plan([_cell()], tmp_path / "m", tmap, log=logs.append)[_cell().id]
    assert any("curve point 1 skipped" in m for m in logs)
    assert [q["step"] for q in got["curve"]] == [2]
    assert got["curve"][0]["scores"]["gedit"] == straight["curve"][1]["scores"]["gedit"]
    assert got["scores"]["items"] == straight["scores"]["items"]

    cfg = load_config(DistillConfig, CONFIG_DIR / _cell().config, [*_cell().overrides, "train.steps=2"])
    for r in cfg.routes:
        r.teacher = tmap.get(r.teacher, r.teacher)
    cfg.student.init = tmap.get(cfg.student.init, cfg.student.init)
    with pytest.raises(UserError, match="newest checkpoint is at step 3, past train.steps=2"):
        train_distill(cfg, d / "run", resume=True)


def test_a_cell_without_curve_parked_before_its_first_record_resumes(tmp_path, monkeypatch):
    """A seed cell (no curve points) interrupted before it wrote anything but checkpoints: parked, it resumes on
    another machine and finishes with the uninterrupted run's scores (it stopped with KeyError 'curve': the
    parked record held only id, key and step, as B/danceopd/s1 parked at step 3,600 did)."""
    def seed_cell():
        c = _cell()
        c.curve, c.curve_test = [], False
        return c

    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}
    straight = runner.run_plan([seed_cell()], tmp_path / "straight", tmap)[seed_cell().id]

    d = tmp_path / "m1" / "cells" / seed_cell().dirname       # machine 1 stopped at step 2, before any record
    shutil.copytree(tmp_path / "straight" / "cells" / seed_cell().dirname, d)
    shutil.rmtree(d / "run" / "checkpoints" / "checkpoint-00000003")
    (d / "run" / "final.json").unlink()
    (d / "cell.json").unlink()
    _spent_before_the_kill(d / "run" / "checkpoints" / "checkpoint-00000002", 1000.0)
    pub = publish.Publisher(tmp_path / "results", commit=False)
    assert [(c.id, s) for c, s in pub.park([seed_cell()], tmp_path / "m1")] == [(seed_cell().id, 2)]
    (parked_dir(seed_cell(), pub.dest) / "cell.json").write_text(json.dumps(   # as an older version parked it
        {"id": seed_cell().id, "key": seed_cell().key(), "parked_step": 2, "status": "parked"}))

    logs = []
    got = runner.run_plan([seed_cell()], tmp_path / "m2", tmap, publisher=pub, log=logs.append)[seed_cell().id]
    assert any("parked checkpoint (step 2" in m for m in logs)
    assert got["status"] == "done" and got["curve"] == [] and got["steps"] == 3
    assert got["scores"]["items"] == straight["scores"]["items"]
    # the 1,000 s machine 1 trained before it was killed count in the cell's cost (they used to be lost: a cell's
    # clock was its last run's), and so does the evaluation
    assert got["train_wall_time_s"] > 1000 and got["eval_wall_time_s"] > 0
    assert got["wall_time_s"] >= got["train_wall_time_s"] + got["eval_wall_time_s"]


def _spent_before_the_kill(ckpt, seconds):
    """Make checkpoint ``ckpt`` say ``seconds`` more of training went before it (its manifest kept valid)."""
    from danceopd.train.checkpoint import MANIFEST, _sha256, verify

    f = ckpt / "trainer_state_0.json"
    state = json.loads(f.read_text())
    state["wall_time"] += seconds
    f.write_text(json.dumps(state))
    m = json.loads((ckpt / MANIFEST).read_text())
    m["files"][f.name] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    (ckpt / MANIFEST).write_text(json.dumps(m))
    assert verify(ckpt) is None
