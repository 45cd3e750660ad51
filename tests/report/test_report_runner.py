"""Reproduction runner (cells cached by key, resumed, forced) and report generation, with tiny teachers and a
stand-in scorer (the real suite is tested in tests/eval)."""

import dataclasses
import json
import threading
import time

import pytest
from tinycfg import make_tiny_teachers

from danceopd.errors import UserError
from danceopd.report import publish, runner
from danceopd.report.plan import (
    DENSE_COST,
    EXTEND_CURVE,
    Cell,
    ablation_cells,
    choose_hparams,
    curve_cells,
    curve_stage,
    edge_stage,
    extend_stage,
    full_grid,
    full_plan_stage1,
    grid_cells,
    later_stage_ids,
    quick_plan,
    rest_stage,
    run_later_stages,
    seed_stage,
)
from danceopd.report.plateau import MAIN_METHODS, budget, overall_quality
from danceopd.report.pool import PriorityPool
from danceopd.report.report import md_to_html, write_report


def fake_scores(model, suite, n, seed, out=None):
    h = (sum(map(ord, str(model))) % 97) / 97
    cats = ["subject_add", "subject_remove", "subject_replace", "color_alter", "background_change", "style_change"]
    t2i = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    gedit = {c: {"sc": 5 + h, "pq": 6.0, "o": 5 + h} for c in cats}
    gedit["avg"] = {"sc": 5 + h, "pq": 6.0, "o": 5 + h}
    geneval = {c: 0.5 + h / 4 for c in t2i}
    geneval["overall"] = 0.5 + h / 4
    return {"gedit": gedit, "geneval": geneval, "fid": 10 * h, "clip_score": 20 + h, "lpips": 0.1 + h / 10}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "evaluate_model", fake_scores)
    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"]),
            "world:local_edit": str(t["local_edit"]), "world:global_edit": str(t["global_edit"])}
    return tmp_path, tmap


def _tiny(cells):
    for c in cells:
        if c.kind == "distill":
            c.overrides += ["train.steps=2", "train.batch_size=2", "rollout.steps=2", "train.checkpoint_every=1",
                            "train.threads=1", "train.log_every=1"]
            c.curve = [1] if c.curve else []
    return cells


def test_plan_cells_and_keys():
    q = quick_plan()
    assert [c.id for c in q] == ["teacher/t2i", "teacher/edit", "A/joint_sft/s0", "A/offpolicy/s0",
                                 "A/danceopd/s0"]
    full = full_plan_stage1() + ablation_cells()
    ids = [c.id for c in full]
    assert len(ids) == len(set(ids))
    # no training is run twice: distinct cells differ in what they compute, not only in their name
    what = [(c.config, tuple(c.overrides), c.eval_n, c.seed) for c in full if c.kind == "distill"]
    assert len(what) == len(set(what))
    default = next(c for c in full if c.tags.get("value") == "hard")
    assert {a for a, _ in default.tags["also"]} == {"query_bias", "k", "rollout_steps", "student_init", "cfg"}
    assert {c.tags.get("ablation") for c in full} >= {"query_bias", "k", "rollout_steps", "student_init", "cfg",
                                                     "routing"}
    a, b = Cell("x", "distill", config="A_danceopd.yaml"), Cell("x", "distill", config="A_danceopd.yaml",
                                                                 overrides=["query.k=2"])
    assert a.key() != b.key() and a.key() == Cell("x", "distill", config="A_danceopd.yaml").key()
    assert overall_quality(fake_scores("m", "all", 1, 0), "A") > 0


def _finished(cells, score=lambda c: 5.0, by_scale=None):
    """Fake finished records of ``cells``: GEdit O / GenEval from ``score(cell)``."""
    out = {}
    for c in cells:
        v = score(c)
        sc = {"gedit": {"avg": {"o": v}}, "geneval": {"overall": v / 10}}
        rec = {"id": c.id, "key": c.key(), "status": "done", "tags": c.tags, "scores": sc}
        if c.sample_scales:
            rec["by_scale"] = {f"{x:g}": by_scale(c, x) if by_scale else sc for x in c.sample_scales}
        if c.curve:   # rises to v at step 1000 (the plateau), flat after
            rec["curve"] = [{"step": s, "scores": {"gedit": {"avg": {"o": v * min(1, s / 1000)}},
                                                   "geneval": {"overall": v / 10 * min(1, s / 1000)}}, "test": sc}
                            for s in c.curve]
        out[c.id] = rec
    return out


def test_full_preset_stages_follow_the_grid_and_the_curves():
    """Grid -> curves (each method with its best validation lr and sampling scale) -> seeds (5 for DanceOPD and
    the strongest baseline, 3 for the others) + the rest; a stage is planned only once the one before finished."""
    grid = grid_cells()
    assert len(grid) == 2 * 4 * 3 and all(c.eval_seed == 10_000 and c.sample_scales for c in grid)
    assert curve_stage({}) is None

    def by_scale(c, x):   # best in the grid: lr 5e-4 for off-policy (an edge; 1e-3 past it is better still),
        # 2e-4 for DanceOPD, 1e-4 elsewhere (an edge; 5e-5 below it is worse); scale 3 for joint SFT, 1 elsewhere
        m, lr = c.tags["method"], float(c.tags["value"])
        rank = {"offpolicy": {1e-3: 2, 5e-4: 1}, "danceopd": {2e-4: 1}}.get(m, {1e-4: 1})
        v = 5.0 + rank.get(lr, 0) + (x == (3.0 if m == "joint_sft" else 1.0))
        return {"gedit": {"avg": {"o": v}}, "geneval": {"overall": v / 10}}

    recs = _finished(grid, by_scale=by_scale)
    assert choose_hparams(recs, "A", "offpolicy") == (5e-4, 1.0)
    assert choose_hparams(recs, "B", "joint_sft") == (1e-4, 3.0)
    assert curve_stage(recs) is None    # the curves wait for the points past the grid's edges
    edge = edge_stage(recs)
    assert sorted(c.id for c in edge) == sorted(
        [f"{s}/offpolicy/s0/grid=lr,value=0.001" for s in "AB"] +
        [f"{s}/{m}/s0/grid=lr,value=5e-05" for s in "AB" for m in ("joint_sft", "soft_mix")])   # not DanceOPD
    assert {c.id for c in edge} <= later_stage_ids()
    recs.update(_finished(edge, by_scale=by_scale))
    assert choose_hparams(recs, "A", "offpolicy") == (1e-3, 1.0)
    curves = curve_stage(recs)
    assert len(curves) == 8 and all(c.curve and c.curve_n == 50 for c in curves)
    sft = next(c for c in curves if c.id == "A/joint_sft/s0")
    assert "train.lr=0.0001" in sft.overrides and "sampling.text_scale=3" in sft.overrides
    assert "train.lr=0.001" in next(c for c in curves if c.id == "B/offpolicy/s0").overrides
    assert seed_stage(recs) is None
    score = lambda c: {"danceopd": 7, "soft_mix": 6.5}.get(c.tags["method"], 6)  # noqa: E731
    # stages 2-4 go per setting: A's seeds do not wait for B's curves
    only_a = {**recs, **_finished([c for c in curves if c.tags["setting"] == "A"], score=score)}
    assert seed_stage(only_a) is None and seed_stage(only_a, settings=("B",)) is None
    assert [c.id for c in curve_stage(only_a, settings=("B",))] == [c.id for c in curves if c.tags["setting"] == "B"]
    assert extend_stage(only_a, settings=("A",)) == []
    a_later = seed_stage(only_a, settings=("A",)) + rest_stage(only_a, settings=("A",))
    assert {c.tags["setting"] for c in a_later} == {"A"} and any("ablation" in c.tags for c in a_later)
    assert not any("ablation" in c.tags or c.tags["method"] in DENSE_COST for c in seed_stage(only_a, settings=("A",)))
    assert rest_stage(only_a, settings=("B",)) is None   # B's rest waits for B's curves
    recs.update(_finished(curves, score=score))
    later = seed_stage(recs) + rest_stage(recs)
    assert {c.id for c in a_later} == {c.id for c in later if c.tags["setting"] == "A"}
    seeds = [c for c in later if "ablation" not in c.tags and c.tags["method"] in
             ("danceopd", "joint_sft", "offpolicy", "soft_mix")]
    count = {(c.tags["setting"], c.tags["method"]): 0 for c in seeds}
    for c in seeds:
        count[(c.tags["setting"], c.tags["method"])] += 1
    assert count[("A", "danceopd")] == count[("A", "soft_mix")] == 4      # seeds 1-4 (+ seed 0 = 5)
    assert count[("A", "joint_sft")] == count[("B", "offpolicy")] == 2    # seeds 1-2 (+ seed 0 = 3)
    # the budget: the first curve point at or past every plateau (all flatten at 1000 here), not CONVERGE_STEPS
    assert all(c.curve_test for c in curves) and not any(c.curve_test or c.curve for c in seeds)
    assert all("train.steps=1000" in c.overrides for c in seeds)
    dense = {(c.tags["method"], c.tags.get("matched")): c for c in later
             if c.tags["method"] in DENSE_COST and c.tags["setting"] == "A"}
    assert len(dense) == 4   # at DanceOPD's wall time, and at matched samples (the budget's steps)
    assert "train.steps=244" in dense[("diffusionopd", None)].overrides   # 1000 / 4.1
    assert "train.steps=244" in dense[("flowopd", None)].overrides
    assert all("train.steps=1000" in dense[(m, "samples")].overrides for m in DENSE_COST)
    assert dense[("flowopd", "samples")].id == "A/flowopd/s0/matched=samples"
    assert {c.id for c in dense.values()} <= later_stage_ids()
    assert extend_stage(recs) == []   # every curve flattened by 3000: no longer curves
    # one curve still rising at its end: all four curves of that setting continue, from their cells' runs
    rising = next(c for c in curves if c.id == "B/offpolicy/s0")
    recs[rising.id]["curve"][-1]["scores"]["gedit"]["avg"]["o"] = 9.9
    assert budget({c.id: recs[c.id] for c in curves}, "B") == 3000
    assert budget({c.id: recs[c.id] for c in curves}, "A") == 1000
    ext = extend_stage(recs)
    assert [c.id for c in ext] == [f"B/{m}/s0/extend=6000" for m in ("danceopd", "joint_sft", "offpolicy",
                                                                    "soft_mix")]
    base = {c.tags["method"]: c for c in curves if c.tags["setting"] == "B"}
    assert all(c.resume_from == base[c.tags["method"]].dirname and c.curve == list(EXTEND_CURVE)
               and "train.steps=6000" in c.overrides and c.curve_test for c in ext)
    # the folder continued is the one the curve cell ran in (its record's key: e.g. --retrain-teachers changes it)
    recs["B/soft_mix/s0"]["key"] = "0123456789ab"
    assert extend_stage(recs)[-1].resume_from == "B__soft_mix__s0--0123456789ab"
    recs["B/soft_mix/s0"]["key"] = base["soft_mix"].key()
    assert {c.id for c in ext} <= later_stage_ids()
    assert seed_stage(recs) is None and rest_stage(recs) is None   # the seeds and the rest wait for the longer curves
    for c in ext:   # off-policy flattens at 4000 (the others were flat already): B's budget is 4000
        late = 10.5 if c.tags["method"] == "offpolicy" else None
        pts = [*recs[base[c.tags["method"]].id]["curve"],
               *({"step": s, "scores": ({"gedit": {"avg": {"o": late}}, "geneval": {"overall": 0.9}} if late else
                                        recs[base[c.tags["method"]].id]["curve"][-2]["scores"]), "test": {}}
                 for s in c.curve)]
        recs[c.id] = {"id": c.id, "status": "done", "tags": c.tags, "scores": {}, "curve": pts}
    later = seed_stage(recs) + rest_stage(recs)
    b_seeds = [c for c in later if c.tags["setting"] == "B" and "ablation" not in c.tags
               and c.tags["method"] in ("danceopd", "joint_sft", "offpolicy", "soft_mix")]
    assert b_seeds and all("train.steps=4000" in c.overrides for c in b_seeds)
    assert sum(c.tags["method"] == "offpolicy" for c in b_seeds) == 4   # now the strongest on validation
    assert {c.id for c in later} <= later_stage_ids() | {c.id for c in later if "ablation" in c.tags}
    assert {c.tags.get("ablation") for c in later} >= {"k", "cfg"}


def test_later_stages_go_setting_by_setting_on_one_job_and_side_by_side_on_several():
    """After the grid: with one job what the comparison needs comes first: A's curves -> longer curves -> seeds,
    then B's, then each setting's weight merge, dense baselines at matched wall time and ablations, and last the dense
    baselines at matched samples; with several, each batch
    holds both settings' next stage (cells side by side). Every curve flattens here, so there are no longer curves;
    a failed curve stops its own setting only."""
    def batches(jobs, fail=None):
        recs, got = _finished(grid_cells()), []

        def run(cells, priority=None):
            rest = all(c.tags["method"] not in MAIN_METHODS or "ablation" in c.tags for c in cells)
            assert priority in (None, int(rest))   # several jobs: the verdict's stages go first in the pool
            got.append(sorted({c.tags.get("setting") for c in cells}) + ["rest" if rest else "main", len(cells)])
            return _finished([c for c in cells if c.id != fail])
        done, pending = run_later_stages(recs, 0, run, jobs)
        return got, pending, done

    # a flat grid: every method's best lr is the smallest (ties go low), so the edge stage (5e-05) runs first
    got, pending, done = batches(1)
    # every setting's short rest before any setting's dense runs at matched samples (hours each on a CPU)
    assert [g[:-1] for g in got] == [["A", "B", "main"], ["A", "main"], ["A", "main"], ["B", "main"], ["B", "main"],
                                     ["A", "rest"], ["B", "rest"], ["A", "rest"], ["B", "rest"]] and not pending
    assert got[1][-1] == 4 and got[3][-1] == 4 and len(done) == sum(g[-1] for g in got)
    assert got[2][-1] == got[4][-1] == 12 and got[5][-1] == 3 + len(ablation_cells()) and got[6][-1] == 3
    assert got[7][-1] == got[8][-1] == 2
    got, pending, _ = batches(2)   # each setting in a thread of its own: edge, then per setting in order
    assert got[0][:-1] == ["A", "B", "main"] and not pending
    for s in ("A", "B"):
        mine = [g[1:] for g in got[1:] if g[0] == s]
        assert mine[:2] == [["main", 4], ["main", 12]] and [m[0] for m in mine[2:]] == ["rest", "rest"]
    got, pending, _ = batches(1, fail="A/soft_mix/s0")   # A's seeds wait; B goes on
    assert [g[:-1] for g in got] == [["A", "B", "main"], ["A", "main"], ["B", "main"], ["B", "main"], ["B", "rest"],
                                     ["B", "rest"]]
    assert pending == ["setting A: longer curves (to 6,000 steps, if a curve still rises at 3,000)",
                       "setting A: the seeds at the budget",
                       "setting A: weight merging, the dense baselines at matched wall time and the ablations",
                       "setting A: the dense baselines at matched samples"]


def test_on_several_jobs_a_setting_ahead_does_not_wait_for_the_other():
    """On a GPU (several jobs), a setting whose curves have finished runs its seeds in the same batch as the other
    setting's curves; finished stages are skipped over (``finished``), and nothing already finished is rerun."""
    recs = _finished(grid_cells())
    grid = full_grid({**recs, **_finished(edge_stage(recs))})
    a_curves = [c for c in curve_cells(grid) if c.tags["setting"] == "A"]
    done = {**_finished(edge_stage(recs)), **_finished(a_curves)}   # on disk / published, not yet loaded
    got = []

    b_curves_done = threading.Event()

    def run(cells, priority):
        kinds = sorted({(c.tags["setting"], "curve" if c.curve else "other", priority) for c in cells})
        assert not any(c.id in done for c in cells)
        if kinds == [("A", "other", 0)]:   # A's seeds are handed over while B's curves are still running
            got.append(kinds)
            assert not b_curves_done.is_set()
        elif kinds == [("B", "curve", 0)]:
            time.sleep(0.5)
            got.append(kinds)
            b_curves_done.set()
        else:
            got.append(kinds)
        return _finished(cells)
    run_later_stages(recs, 0, run, jobs=8, finished=lambda cells: {c.id: done[c.id] for c in cells if c.id in done})
    assert got[0] == [("A", "other", 0)] and got[1] == [("A", "other", 1)]   # A's seeds, then A's rest (priority 1)
    assert [("B", "curve", 0)] in got and [("B", "other", 0)] in got and [("B", "other", 1)] in got
    assert got.index([("B", "curve", 0)]) < got.index([("B", "other", 0)]) < got.index([("B", "other", 1)])
    assert len(got) == 7   # per setting: seeds, the short rest, the dense runs at matched samples


def test_the_pool_starts_the_waiting_cell_of_lowest_priority_first(tmp_path, monkeypatch):
    """PriorityPool: cells are handed to the workers one at a time, so a cell submitted later with a lower priority
    (a setting's seeds) starts before cells waiting with a higher one (the other setting's ablations)."""
    import concurrent.futures as cf

    started = []

    class Inline:   # stands in for the process pool: runs a job when the test says so
        def __init__(self):
            self.jobs = []

        def submit(self, fn, cell, force, *args):
            started.append(cell.id)
            f = cf.Future()
            self.jobs.append(f)
            return f

    def make(grace):
        return PriorityPool(1, Inline(), job=None, grace=grace)

    pool = make(0.0)
    mk = [Cell(id=f"A/x/s{i}", kind="teacher", model="m") for i in range(3)]
    futs = [pool.submit(mk[0], 1), pool.submit(mk[1], 1), pool.submit(mk[2], 0)]
    assert started == ["A/x/s0"]                       # one worker: the first runs, the others wait
    pool.executor.jobs[0].set_result({"id": "A/x/s0"})
    assert started == ["A/x/s0", "A/x/s2"]             # priority 0 overtakes the earlier priority-1 cell
    pool.executor.jobs[1].set_result({"id": "A/x/s2"})
    pool.executor.jobs[2].set_exception(RuntimeError("boom"))
    assert started == ["A/x/s0", "A/x/s2", "A/x/s1"] and futs[2].result() == {"id": "A/x/s2"}
    with pytest.raises(RuntimeError, match="boom"):
        futs[1].result()

    # grace: an idle pool does not give its worker to a priority-1 cell at once; the curve that the other
    # setting's thread hands over a moment later goes first, and the priority-1 cell still starts after it
    started.clear()
    pool = make(0.3)
    late = pool.submit(Cell(id="A/ablation/s0", kind="teacher", model="m"), 1)
    pool.submit(Cell(id="B/curve/s0", kind="teacher", model="m"), 0)
    assert started == ["B/curve/s0"]
    pool.executor.jobs[0].set_result({})
    time.sleep(0.5)
    assert started == ["B/curve/s0", "A/ablation/s0"] and not late.done()


def test_runner_caches_resumes_and_forces(setup):
    root, tmap = setup
    cells = _tiny(quick_plan())
    recs = runner.run_plan(cells, root / "r", tmap)
    assert all(r["status"] == "done" for r in recs.values())
    rec = recs["A/danceopd/s0"]
    assert rec["sec_per_step"] is not None
    assert rec["command"].startswith("danceopd distill --config configs/world/A_danceopd.yaml")
    cell_dir = root / "r" / "cells" / cells[-1].dirname
    mtime = (cell_dir / "cell.json").stat().st_mtime_ns
    from safetensors.torch import load_file

    before = load_file(str(cell_dir / "run" / "model.safetensors"))
    runner.run_plan(cells, root / "r", tmap)  # reuse: nothing rerun
    assert (cell_dir / "cell.json").stat().st_mtime_ns == mtime
    # an interrupted cell (status not done) is continued, not restarted
    rec_j = json.loads((cell_dir / "cell.json").read_text())
    rec_j["status"] = "running"
    (cell_dir / "cell.json").write_text(json.dumps(rec_j))
    again = runner.run_plan(cells, root / "r", tmap)["A/danceopd/s0"]
    after = load_file(str(cell_dir / "run" / "model.safetensors"))
    assert all(after[k].equal(before[k]) for k in before)
    assert again["sec_per_step"] == rec["sec_per_step"]   # resumed at its last step: the earlier timing is kept
    # --force redoes exactly one cell
    runner.run_plan(cells, root / "r", tmap, force=["A/danceopd/s0"])
    with pytest.raises(UserError, match="no such cell"):
        runner.run_plan(cells, root / "r", tmap, force=["A/nope/s0"])
    # a changed config is a different cell: the old result stays
    cells2 = _tiny(quick_plan())
    cells2[-1].overrides.append("query.bias=mid_t")
    runner.run_plan(cells2, root / "r", tmap)
    assert cell_dir.exists() and (root / "r" / "cells" / cells2[-1].dirname).exists()


def test_report_tables_and_html(setup):
    root, tmap = setup
    recs = runner.run_plan(_tiny(quick_plan()), root / "r", tmap)
    for r in recs.values():
        if r["kind"] == "teacher":
            r["model"] = tmap[f"world:{r['tags']['teacher']}"]
    path = write_report(recs, root / "r", "test report", "danceopd reproduce --preset quick")
    md = path.read_text()
    for row in ("Single-Task Teacher", "Naive Student (Average Gradients)", "Off-Policy Distillation",
                "DanceOPD (On-Policy)", "T2I FID", "Local Editing CLIP score", "Global Editing LPIPS",
                "subj-add", "GenEval overall", "s / step", "relative gain", "Provenance", "git SHA"):
        assert row in md, row
    assert (root / "r" / "figures" / "samples_A.png").exists()
    html = (root / "r" / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "figures/" not in html.split("<body>")[1]


def test_md_to_html_minimal(tmp_path):
    html = md_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | **2** |\n\n- item `x`\n", tmp_path, "t")
    assert "<h1>T</h1>" in html and "<td><b>2</b></td>" in html and "<code>x</code>" in html


def test_report_only_partial_and_publish(setup, tmp_path):
    """load_done returns only finished cells; a partial report says so; publish copies report, figures and cell
    records (no weights) and leaves other files in the destination alone."""
    root, tmap = setup
    cells = _tiny(quick_plan())
    runner.run_plan(cells[:3], root / "r", tmap)  # two teachers + joint_sft; offpolicy and danceopd not run
    recs = runner.load_done(cells, root / "r")
    assert sorted(recs) == ["A/joint_sft/s0", "teacher/edit", "teacher/t2i"]
    # labels are not part of a cell's key: a finished record picks up the plan's current tags
    p = root / "r" / "cells" / cells[2].dirname / "cell.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "tags": {"old": 1}}))
    assert runner.load_done(cells, root / "r")["A/joint_sft/s0"]["tags"] == cells[2].tags
    for r in recs.values():
        if r["kind"] == "teacher":
            r["model"] = tmap[f"world:{r['tags']['teacher']}"]
    md = write_report(recs, root / "r", "t", "cmd", planned=len(cells)).read_text()
    assert "Partial report: 3 of 5 cells finished" in md
    dest = tmp_path / "pub"
    dest.mkdir()
    (dest / "KEEP.txt").write_text("mine")
    publish.publish(root / "r", dest)
    assert (dest / "report.md").read_text() == md and (dest / "KEEP.txt").read_text() == "mine"
    assert (dest / "figures" / "samples_A.png").exists()
    pub = sorted(p.name for p in (dest / "cells").iterdir())
    assert len(pub) == 3 and all(p.endswith(".json") for p in pub)
    assert not list(dest.rglob("*.safetensors"))
    full = write_report(runner.load_done(cells, root / "r") | recs, root / "r", "t", "cmd", planned=3)
    assert "Partial report" not in full.read_text()


def test_reproduce_cli_rejects_bad_flags_before_work(run_cli, tmp_path, capsys, monkeypatch):
    from danceopd.report import cell
    monkeypatch.setattr(cell, "STUDENT_DIR", tmp_path / "no_students")   # the quick preset without shipped students
    assert run_cli(["reproduce", "--preset", "nope", "--out", tmp_path / "o"]) == 2
    assert "--preset must be quick or full" in capsys.readouterr().err
    assert run_cli(["reproduce", "--report-only", "--force", "A/danceopd/s0", "--out", tmp_path / "o"]) == 2
    assert "--report-only runs nothing" in capsys.readouterr().err
    # report-only on an empty folder writes a partial report and runs nothing
    assert run_cli(["reproduce", "--report-only", "--out", tmp_path / "o2"]) == 0
    md = (tmp_path / "o2" / "report.md").read_text()
    assert "Partial report: 0 of 5 cells finished" in md and not (tmp_path / "o2" / "cells").exists()
    # the full preset's partial report names the stages not planned yet
    assert run_cli(["reproduce", "--preset", "full", "--report-only", "--out", tmp_path / "o5"]) == 0
    md = (tmp_path / "o5" / "report.md").read_text()
    assert "of 28 cells finished" in md and "Not planned yet" in md and "setting A: the curves (seed 0" in md
    assert "setting B: the seeds at the budget" in md
    assert "not planned yet" in capsys.readouterr().out
    # --report-only --publish: the cells published there count too (adopted, as a run would; nothing is run)
    seen = []
    monkeypatch.setattr(runner, "adopt_published", lambda c, root, dest: seen.append((c.id, dest)))
    assert run_cli(["reproduce", "--preset", "full", "--report-only", "--publish", tmp_path / "pub6", "--out",
                    tmp_path / "o6"]) == 0
    assert len(seen) == 28 and {d for _, d in seen} == {tmp_path / "pub6"}
    assert (tmp_path / "pub6" / "report.md").is_file()
    capsys.readouterr()
    monkeypatch.undo()
    monkeypatch.setattr(cell, "STUDENT_DIR", tmp_path / "no_students")
    # --park with nothing unfinished: parks nothing, writes nothing to the publish folder
    assert run_cli(["reproduce", "--preset", "full", "--park", "--publish", tmp_path / "pub", "--out",
                    tmp_path / "o5"]) == 0
    assert "parked: nothing" in capsys.readouterr().out and not (tmp_path / "pub").exists()
    for flags, msg in ((["--device", "tpu"], "--device must be cpu or cuda"), (["--jobs", "0"], "--jobs must be >= 1"),
                       (["--commit"], "give --publish DIR too"), (["--park"], "give --publish DIR too"),
                       (["--park", "--force", "A/danceopd/s0"], "--park runs nothing")):
        assert run_cli(["reproduce", *flags, "--out", tmp_path / "o4"]) == 2
        assert msg in capsys.readouterr().err and not (tmp_path / "o4").exists()
    # an unknown --force id fails before anything is created
    assert run_cli(["reproduce", "--preset", "full", "--force", "A/nope/s0", "--out", tmp_path / "o3"]) == 2
    assert "no such cell" in capsys.readouterr().err and not (tmp_path / "o3").exists()


def test_force_ids_cover_every_full_stage():
    """A cell of a later stage forced in the full preset is accepted up front; an unknown id is refused."""
    ids = {c.id for c in full_plan_stage1(0)} | later_stage_ids()
    runner.check_force(["A/flowopd/s0", "B/danceopd/s4", "A/soft_mix/s1", "A/danceopd/s0/grid=lr,value=0.0005"],
                       ids)
    with pytest.raises(UserError, match="no such cell"):
        runner.check_force(["A/flowopd/s7"], ids)


def test_cell_key_follows_the_shipped_teacher_weights(tmp_path, monkeypatch):
    """Re-shipping a teacher (new sha256 in the manifest) makes every cell that uses it a new cell."""
    import danceopd.backends.registry as reg

    def key_with(manifest):
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        return (Cell("A/danceopd/s0", "distill", config="A_danceopd.yaml").key(),
                Cell("B/danceopd/s0", "distill", config="B_danceopd.yaml").key(),
                Cell("teacher/t2i", "teacher", model="world:t2i").key())

    monkeypatch.setattr(reg, "ASSET_DIR", tmp_path)
    base = {n: {"sha256": n * 3} for n in ("t2i", "edit", "local_edit", "global_edit")}
    a0, b0, t0 = key_with(base)
    assert key_with(base) == (a0, b0, t0)
    a1, b1, t1 = key_with({**base, "edit": {"sha256": "new"}})
    assert a1 != a0 and b1 == b0 and t1 == t0
    retrained = Cell("A/danceopd/s0", "distill", config="A_danceopd.yaml", teacher_runs={"world:edit": "runs/x"})
    assert retrained.key() != a1


def test_report_ablations_with_cfg_sampling_cost(setup):
    """Ablation cells of the full plan become a table + plot each; the CFG grid row carries the forwards per
    sampling step and a measured ms per image."""
    import re

    root, tmap = setup
    plan = ablation_cells()
    cells = [c for c in plan if c.tags.get("ablation") == "k"][:1] + [c for c in plan if c.tags.get("ablation") == "cfg"][:2]
    recs = runner.run_plan(_tiny(cells), root / "r", tmap)
    md = write_report(recs, root / "r", "t", "cmd").read_text()
    assert "### CFG absorption" in md and "### Queries per rollout K" in md
    # the default-config cell is also a point of the other ablations
    recs2 = runner.run_plan(_tiny([c for c in ablation_cells() if c.tags.get("value") == "hard"]), root / "r2", tmap)
    md2 = write_report(recs2, root / "r2", "t", "cmd").read_text()
    for title in ("Hard vs soft routing", "Query bias", "Queries per rollout K", "Rollout steps",
                  "Student initialization", "CFG absorption"):
        assert f"### {title}" in md2, title
    row = next(ln for ln in md.splitlines() if ln.startswith("| a1_b1 "))
    assert re.search(r"\| 1 / \d+\.\d \|$", row), row
    assert (root / "r" / "figures" / "ablation_cfg.png").exists()


def test_published_cells_are_reused_on_a_fresh_machine(setup):
    """Each finished cell is published as it finishes (record; fp16 student for the cells the report draws: curve
    cells and seed-0 main cells); a new run folder (a fresh clone) adopts published cells with the same key instead
    of training them again."""
    root, tmap = setup
    cells = _tiny(quick_plan())
    cells[-1].curve = [1]                       # the DanceOPD cell: curve cell, so its student is published
    cells[-2].tags = {**cells[-2].tags, "ablation": "k"}   # not drawn by the report (tags are not in the key)
    pub = publish.Publisher(root / "pub")
    recs = runner.run_plan(cells, root / "r1", tmap, publisher=pub)
    rec_p, w_p = publish.published_paths(cells[-1], root / "pub")
    assert rec_p.is_file() and w_p.is_file()
    assert publish.published_paths(cells[-3], root / "pub")[1].is_file()     # seed-0 main cell: a figure row
    assert cells[-2].kind == "distill" and publish.published_paths(cells[-2], root / "pub")[0].is_file()
    assert not publish.published_paths(cells[-2], root / "pub")[1].exists()  # ablation: record only
    matched = dataclasses.replace(cells[-3], tags={**cells[-3].tags, "matched": "samples"})
    assert publish.report_draws(cells[-3]) and not publish.report_draws(matched)  # matched samples: not a figure row
    from safetensors import safe_open

    with safe_open(str(w_p), "pt") as f:
        assert all(f.get_tensor(k).dtype.is_floating_point and f.get_tensor(k).element_size() == 2
                   for k in f.keys())
    recs2 = runner.run_plan(_tiny(quick_plan()) [:-1] + [cells[-1]], root / "r2", tmap, publisher=pub)
    for c in cells:
        assert recs2[c.id]["scores"] == recs[c.id]["scores"]
        assert "adopted_from" in recs2[c.id]
        assert not (root / "r2" / "cells" / c.dirname / "run" / "checkpoints").exists()   # nothing trained
    assert (root / "r2" / "cells" / cells[-1].dirname / "run" / "model.safetensors").is_file()
    # publishing the adopting run leaves the adopted records as they were published (no local paths written back)
    before = rec_p.read_text()
    write_report(recs2, root / "r2", "t", "cmd")
    running = root / "r2" / "cells" / "A__x__s0--0123" / "cell.json"   # a cell still training: not published
    running.parent.mkdir()
    running.write_text(json.dumps({"id": "A/x/s0", "curve": [{"step": 250}]}))
    publish.publish(root / "r2", root / "pub")
    assert rec_p.read_text() == before and not (root / "pub" / "cells" / "A__x__s0--0123.json").exists()
    # a published record whose key differs (another config) is not adopted
    other = _tiny(quick_plan())[-1]
    other.overrides.append("query.bias=mid_t")
    assert publish.adopt_published(other, root / "r3", root / "pub") is None


def test_curve_cells_score_each_point_on_the_test_seed_as_a_run_stopped_there(tmp_path):
    """A curve cell (curve_test) scores every curve point on VAL_SEED and on its own test seed; the test score at
    step b equals the final score of a separate b-step run (constant LR after warmup, exact resume), which is what
    lets the budget's seed-0 result be read off the curve. Real evaluation of tiny models."""
    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}
    cell = _tiny(quick_plan())[-1]                # A/danceopd/s0, 2 steps
    cell.curve, cell.curve_test, cell.eval_n, cell.curve_n = [1, 2], True, 1, 1
    rec = runner.run_plan([cell], tmp_path / "c", tmap)[cell.id]
    assert [p["step"] for p in rec["curve"]] == [1, 2] and all("items" in p["test"] for p in rec["curve"])
    assert all("items" not in p["scores"] for p in rec["curve"])   # validation points: aggregates only
    assert rec["scores"] == rec["curve"][-1]["test"]          # the final point is not evaluated twice
    assert (tmp_path / "c" / "cells" / cell.dirname / "snapshots" / "step_1.safetensors").is_file()
    short = _tiny(quick_plan())[-1]
    short.overrides.append("train.steps=1")
    short.eval_n = 1
    one = runner.run_plan([short], tmp_path / "s", tmap)[short.id]
    at1 = rec["curve"][0]["test"]
    assert one["scores"]["items"] == at1["items"] and one["scores"]["lpips"] == at1["lpips"]
    assert rec["curve"][1]["test"]["lpips"] != at1["lpips"]   # a step later the student differs


def test_jobs_run_cells_in_worker_processes_with_the_same_results(tmp_path):
    """--jobs 2: two cells at once in spawned workers (real evaluation, tiny models), same scores as one by one."""
    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}
    cells = [c for c in _tiny(quick_plan()) if c.kind == "distill"][1:]   # offpolicy, danceopd
    for c in cells:
        c.eval_n = 1
    par = runner.run_plan(cells, tmp_path / "par", tmap, jobs=2)
    again = [c for c in _tiny(quick_plan()) if c.id in par]
    for c in again:
        c.eval_n = 1
    ser = runner.run_plan(again, tmp_path / "ser", tmap)
    for cid in par:
        a, b = par[cid]["scores"], ser[cid]["scores"]
        assert a["gedit"] == b["gedit"] and a["geneval"] == b["geneval"], cid


def test_a_curve_extension_continues_its_cells_run(tmp_path):
    """A longer curve continues the finished curve cell: its points are taken over, training resumes from the
    cell's last checkpoint, and the student it reaches is the one a run of that length trains (real evaluation,
    tiny models). On a machine without the cell's checkpoints it trains from step 0 to the same student."""
    t = make_tiny_teachers(tmp_path / "teachers")
    tmap = {"world:t2i": str(t["t2i"]), "world:edit": str(t["edit"])}

    def cell(steps, curve):
        c = _tiny(quick_plan())[-1]                # A/danceopd/s0
        c.overrides.append(f"train.steps={steps}")
        c.curve, c.curve_test, c.eval_n, c.curve_n = curve, True, 1, 1
        return c

    base = cell(2, [1, 2])
    runner.run_plan([base], tmp_path / "r", tmap)
    ext = cell(3, [3])
    ext.id, ext.resume_from, ext.tags = ext.id + "/extend=3", base.dirname, {**ext.tags, "extend": 3}
    logs = []
    rec = runner.run_plan([ext], tmp_path / "r", tmap, log=logs.append)[ext.id]
    assert [p["step"] for p in rec["curve"]] == [1, 2, 3] and rec["continues"] == base.id
    base_rec = json.loads((tmp_path / "r" / "cells" / base.dirname / "cell.json").read_text())
    assert rec["continued_train_wall_s"] == base_rec["train_wall_time_s"] > 0   # the base's cost is not counted twice
    assert any("from its last checkpoint" in m for m in logs)
    straight = cell(3, [])
    straight.id = "straight"
    one = runner.run_plan([straight], tmp_path / "s", tmap)["straight"]
    assert one["scores"]["items"] == rec["curve"][-1]["test"]["items"] == rec["scores"]["items"]
    # a fresh machine: the base cell's record without its run -> trains from step 0, same student
    fresh = tmp_path / "fresh" / "cells" / base.dirname
    fresh.mkdir(parents=True)
    (fresh / "cell.json").write_text((tmp_path / "r" / "cells" / base.dirname / "cell.json").read_text())
    logs.clear()
    again = runner.run_plan([ext], tmp_path / "fresh", tmap, log=logs.append)[ext.id]
    assert any("training from step 0" in m for m in logs)
    assert again["scores"]["items"] == rec["scores"]["items"]


def test_a_failed_cell_is_said_at_once_and_the_others_of_its_batch_still_finish(tmp_path):
    """Several jobs: a cell that fails in its worker is logged with its traceback when it fails (not at the end of
    the run, where a time limit may never let it show), the batch's other cells are still published, and the batch
    then raises, so no stage is planned from an incomplete one."""
    import concurrent.futures as cf

    class Pool:
        def submit(self, cell, priority, force):
            f = cf.Future()
            if cell.id.endswith("bad"):
                f.set_exception(RuntimeError("Expected all tensors to be on the same device"))
            elif cell.id.endswith("stop"):   # the time limit's SIGINT reached the worker
                f.set_exception(KeyboardInterrupt())
            else:
                f.set_result({"id": cell.id, "status": "done", "wall_time_s": 1.0})
            return f

    published, logs = [], []

    class Pub:
        dest = None

        def __call__(self, c, r):
            published.append(c.id)
    cells = [Cell(id="A/x/bad", kind="teacher", model="m"), Cell(id="A/x/good", kind="teacher", model="m")]
    with pytest.raises(RuntimeError, match="same device"):
        runner.run_plan(cells, tmp_path, {}, log=logs.append, publisher=Pub(), jobs=2, pool=Pool())
    assert published == ["A/x/good"]
    bad = next(m for m in logs if "A/x/bad" in m)
    assert "FAILED" in bad and "RuntimeError: Expected all tensors" in bad
    logs.clear()   # an interrupted cell is said as such, without a traceback, and the interrupt goes on
    with pytest.raises(KeyboardInterrupt):
        runner.run_plan([Cell(id="A/x/stop", kind="teacher", model="m")], tmp_path, {}, log=logs.append,
                        jobs=2, pool=Pool())
    assert [m.split(" ", 1)[1] for m in logs] == ["A/x/stop: interrupted"]


def test_an_idle_cell_worker_ignores_sigint(tmp_path):
    """A Ctrl-C (or the GPU script's time limit) reaches every worker: an idle one must stay quiet and alive (it
    printed a KeyboardInterrupt traceback from its queue before), a running cell is stopped (``_cell_job``)."""
    import multiprocessing as mp
    import os
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                             initializer=runner._idle_worker_ignores_sigint) as ex:
        pid = ex.submit(os.getpid).result()
        os.kill(pid, signal.SIGINT)
        time.sleep(0.5)
        assert ex.submit(os.getpid).result() == pid


def test_cell_wall_time_counts_training_before_an_interruption_and_not_the_continued_cell():
    """A record that kept only its last run's clock is raised to its own training time; a curve extension's
    training clock (which includes the cell it continues) has that cell's training time taken off."""
    from danceopd.report.report import cell_wall_s

    recs = {"a": {"id": "a", "wall_time_s": 500.0, "train_wall_time_s": 400.0},
            "b": {"id": "b", "wall_time_s": 100.0, "train_wall_time_s": 900.0},
            "a/ext": {"id": "a/ext", "continues": "a", "wall_time_s": 50.0, "train_wall_time_s": 1000.0},
            "a/new": {"id": "a/new", "continues": "a", "wall_time_s": 700.0, "train_wall_time_s": 1000.0,
                      "continued_train_wall_s": 400.0}}
    assert [cell_wall_s(recs[k], recs) for k in recs] == [500.0, 900.0, 600.0, 700.0]
