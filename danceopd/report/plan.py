"""The cells of a reproduction (``cell.Cell``): teacher evaluations, teacher trainings (optional), distillation
runs, ablations; the quick preset; and the full preset's protocol (grid, curves, budget rule, seeds).

Long file: the full preset is one staged protocol, each stage planned from the records of the one before; split,
the order of the stages and the rules between them would be spread over modules that only make sense together.
"""

from __future__ import annotations

import functools

from .cell import Cell
from .cell import dirname as cell_dirname
from .plateau import MAIN_METHODS, budget, longest_curves, overall_quality, plateaus, strongest_baseline

METHODS_ALL = ("joint_sft", "weight_merge", "offpolicy", "soft_mix", "diffusionopd", "flowopd", "danceopd")
TEACHERS = {"A": ("t2i", "edit"), "B": ("local_edit", "global_edit")}


def _distill(setting, method, seed, steps=None, eval_n=None, curve=(), curve_n=None, extra=(), tag_extra=None,
             suite=None, eval_seed=None, sample_scales=()):
    ov = [f"seed={seed}"] + ([f"train.steps={steps}"] if steps else []) + list(extra)
    cid = f"{setting}/{method}/s{seed}" + ("" if not tag_extra else "/" + ",".join(
        f"{k}={v}" for k, v in tag_extra.items()))
    return Cell(cid, "distill", config=f"{setting}_{method}.yaml", overrides=ov,
                suite=suite or ("all" if setting == "A" else "edit"), eval_n=eval_n, seed=seed,
                curve=list(curve), curve_n=curve_n, eval_seed=eval_seed, sample_scales=list(sample_scales),
                tags={"setting": setting, "method": method, "seed": seed, **(tag_extra or {})})


def teacher_cells(eval_n=None, names=("t2i", "edit", "local_edit", "global_edit"), model_prefix="world:"):
    # the T2I base has no source-image input: it is scored on the T2I suite only; edit teachers on both (their
    # T2I scores measure the interference of edit fine-tuning)
    return [Cell(f"teacher/{n}", "teacher", model=f"{model_prefix}{n}", suite="t2i" if n == "t2i" else "all",
                 eval_n=eval_n, tags={"teacher": n}) for n in names]


QUICK_N, QUICK_STEPS = 8, 120        # without shipped students: students trained here, scored on 8 per category
SHIPPED_N, LIVE_STEPS = 16, 60       # with them: the shipped students scored on 16 per category + a live run


def quick_plan(seed: int = 0, shipped: dict[str, dict] | None = None) -> list[Cell]:
    """The main command. With ``shipped`` students (``student_manifest()``): the teachers and the shipped
    converged students of every shipped setting evaluated here (SHIPPED_N per category, evaluation seed ``seed``), then a
    short live DanceOPD distillation (LIVE_STEPS steps, setting A) so the method is seen training. Without: the
    comparison table's four rows in setting A, students trained here for QUICK_STEPS steps, QUICK_N per
    category."""
    if not shipped:
        cells = teacher_cells(eval_n=QUICK_N, names=TEACHERS["A"])
        for m in ("joint_sft", "offpolicy", "danceopd"):
            cells.append(_distill("A", m, seed, steps=QUICK_STEPS, eval_n=QUICK_N))
        return cells
    settings = sorted({e["setting"] for e in shipped.values()})   # a setting is shipped whole (report/ship.py)
    cells = teacher_cells(eval_n=SHIPPED_N, names=tuple(t for s in settings for t in TEACHERS[s]))
    for c in cells:
        c.seed = seed
    for name, e in sorted(shipped.items()):
        s, m = e["setting"], e["method"]
        cells.append(Cell(f"{s}/{m}/shipped", "teacher", model=f"shipped:{name}", suite="all" if s == "A" else "edit",
                          eval_n=SHIPPED_N, seed=seed,
                          tags={"setting": s, "method": m, "seed": e.get("seed", 0), "shipped": e.get("steps")}))
    cells.append(_distill("A", "danceopd", seed, steps=LIVE_STEPS, eval_n=SHIPPED_N,
                          tag_extra={"live": LIVE_STEPS}))
    return cells


# The dense on-policy baselines cost more per step than DanceOPD. Measured in the setting configs' layout (both
# routes every step, 16 samples each; an earlier bench timed DanceOPD hard-routed at 32 and the dense methods at 32
# PER ROUTE, which gave 17.4x / 4.7x and starved them of steps), Intel Xeon 2 cores, nothing else running:
#   `danceopd distill --config configs/world/<S>_<m>.yaml --set train.steps=40` (final.json sec_per_step):
#     A: DanceOPD 0.607-0.725, DiffusionOPD 2.468, Flow-OPD 2.482 s;  B: DanceOPD 0.696-0.779, 2.984, 2.987 s
#   `python scripts/bench_distill.py --threads 2 --iters 3` table (c): 0.731 / 3.084 (4.22x) / 3.127 (4.28x)
# i.e. about 4.1x in both settings for both (the run-to-run spread of a DanceOPD step is ~10%). They get the steps
# that cost about DanceOPD's training time at the budget (matched wall time); the report prints every row's steps,
# s/step and wall time next to its scores.
DENSE_COST = {"diffusionopd": 4.1, "flowopd": 4.1}   # s/step relative to DanceOPD (measured above)


def dense_steps(method: str, budget: int) -> int:
    """Steps of a dense on-policy baseline that cost about ``budget`` DanceOPD steps of wall time."""
    return max(1, round(budget / DENSE_COST[method]))


ABLATION_STEPS = 200
ABLATION_EVAL_N = 40


def ablation_cells(seed: int = 0) -> list[Cell]:
    """The ablations (setting A, ABLATION_STEPS steps, n = ABLATION_EVAL_N): a shorter budget than the comparison."""
    A, abl_steps, n = "A", ABLATION_STEPS, ABLATION_EVAL_N
    cells = []

    def abl(method, extra, name, value):
        return _distill(A, method, seed, steps=abl_steps, eval_n=n, extra=extra,
                        tag_extra={"ablation": name, "value": value})

    # The default DanceOPD config at the ablation budget is one cell (the "hard routing" point); it is also the
    # low_t / K=1 / 8 rollout steps / merged init / alpha 3, beta 1 point of the other ablations (tags["also"]),
    # so the same training is never run twice.
    default = abl("danceopd", [], "routing", "hard")
    default.tags["also"] = [["query_bias", "low_t"], ["k", 1], ["rollout_steps", 8], ["student_init", "merged"],
                            ["cfg", "a3_b1"]]
    cells.append(abl("soft_mix", [], "routing", "soft"))
    cells.append(default)
    for bias in ("mid_t", "high_t"):
        cells.append(abl("danceopd", [f"query.bias={bias}"], "query_bias", bias))
    for k in (2, 4, 16):
        cells.append(abl("danceopd", [f"query.k={k}"], "k", k))
    for steps in (4, 16):
        cells.append(abl("danceopd", [f"rollout.steps={steps}"], "rollout_steps", steps))
    for init in ("world:t2i", "world:edit"):
        cells.append(abl("danceopd", [f"student.init={init}"], "student_init", init))
    for alpha, beta in ((1.0, 1.0), (1.0, 3.0), (3.0, 3.0)):
        cells.append(abl("danceopd", [f"teacher_guidance.text_scale={alpha}", f"rollout.text_scale={beta}",
                                      f"sampling.text_scale={beta}"], "cfg", f"a{alpha:g}_b{beta:g}"))
    return cells


def full_plan_stage1(seed: int = 0) -> list[Cell]:
    """The first stage of the full preset: the teachers' scores and the learning-rate x guidance grid."""
    return teacher_cells() + grid_cells(seed)


# ---- the comparison at convergence (docs/reproduce.md, "Presets") -------------------------------------------------
# Every main method sees both routes in every optimizer step, 16 samples each (configs/world/setting_*.yaml), so a
# step is 32 training samples for every method and steps are matched samples. The protocol, in stages:
#   1. grid:     learning rate x sampling guidance per (setting, method), GRID_STEPS steps, scored on VAL_SEED;
#   1b. edge:    a method whose best lr is at an edge of LR_GRID gets one more lr EDGE_FACTOR past that edge;
#   2. curves:   seed 0 of every main method with its chosen settings to CONVERGE_STEPS, scored every few hundred
#                steps on VAL_SEED (the budget is read off these curves);
#   2b. longer:  in a setting where a curve is still rising at CONVERGE_STEPS, all four of its curves continue (from
#                their checkpoints) to EXTEND_STEPS, so every method has a result at any budget up to there;
#   3. seeds:    DanceOPD and the strongest baseline to 5 seeds, the other main methods to 3, at the budget;
#   4. the rest: dense on-policy baselines at DanceOPD's wall time and at matched samples, weight merge, ablations
#                (shorter budget).
# Seeds count from ``base`` (``reproduce --seed``; default 0): grid, curves and ablations use base, the extra seeds
# base + 1, ... Final scores of a seed-s cell use evaluation seed s (disjoint prompt / edit sets per seed, never
# VAL_SEED).
LR_GRID = (1e-4, 2e-4, 5e-4)
SCALE_GRID = (1.0, 2.0, 3.0)   # text guidance the trained student samples with (1 = CFG absorbed)
EDGE_FACTOR = 2                # a best lr at the grid's edge: one more point this factor past it (stage 1b)
GRID_STEPS = 400
GRID_N = 24
VAL_SEED = 10_000
CONVERGE_STEPS = 3000
CONVERGE_CURVE = (250, 500, 1000, 1500, 2000, 2500, 3000)   # the last point: the budget, on VAL_SEED
CONVERGE_CURVE_N = 50
EXTEND_STEPS = 6000                 # curves still rising at CONVERGE_STEPS continue to here ...
EXTEND_CURVE = (4000, 5000, 6000)   # ... scored at these steps
SEEDS_BEST, SEEDS_OTHER = 5, 3


def _grid_cell(setting: str, method: str, lr: float, base: int) -> Cell:
    return _distill(setting, method, base, steps=GRID_STEPS, eval_n=GRID_N, extra=[f"train.lr={lr:g}"],
                    eval_seed=VAL_SEED, sample_scales=SCALE_GRID, tag_extra={"grid": "lr", "value": f"{lr:g}"})


def grid_cells(base: int = 0) -> list[Cell]:
    """Stage 1: learning rate (trained) x sampling guidance (evaluated) for every main method in both settings."""
    return [_grid_cell(s, m, lr, base) for s in ("A", "B") for m in MAIN_METHODS for lr in LR_GRID]


def edge_cells(grid: dict[str, dict], base: int = 0) -> list[Cell]:
    """Stage 1b: a method whose best learning rate is at an edge of LR_GRID gets one more grid point past that edge
    (x EDGE_FACTOR above the top, / EDGE_FACTOR below the bottom); every method by the same rule."""
    cells = []
    for s in ("A", "B"):
        for m in MAIN_METHODS:
            lr = choose_hparams(grid, s, m)[0]
            if lr in (LR_GRID[0], LR_GRID[-1]):
                cells.append(_grid_cell(s, m, lr * EDGE_FACTOR if lr == LR_GRID[-1] else lr / EDGE_FACTOR, base))
    return cells


def full_grid(recs: dict[str, dict], base: int = 0) -> dict[str, dict] | None:
    """The finished grid with its edge points (stages 1 and 1b), or None while any of them is missing."""
    grid = _done(recs, grid_cells(base))
    edge = None if grid is None else _done(recs, edge_cells(grid, base))
    return None if edge is None else {**grid, **edge}


def choose_hparams(grid: dict[str, dict], setting: str, method: str) -> tuple[float, float]:
    """(lr, sampling text scale) with the best validation overall quality among the finished grid cells of
    (setting, method); ties go to the smaller learning rate and the smaller scale."""
    best = None
    for rec in grid.values():
        t = rec.get("tags", {})
        if t.get("grid") != "lr" or t.get("setting") != setting or t.get("method") != method:
            continue
        for scale, sc in (rec.get("by_scale") or {}).items():
            q = overall_quality(sc, setting)
            cand = (q, -float(t["value"]), -float(scale))
            if q == q and (best is None or cand > best):
                best = cand
    if best is None:
        raise KeyError(f"no finished grid cell for {setting}/{method}")
    return -best[1], -best[2]


def _converged(setting, method, seed, hp, curve=False, steps=CONVERGE_STEPS):
    lr, scale = hp
    c = _distill(setting, method, seed, steps=steps,
                 extra=[f"train.lr={lr:g}", f"sampling.text_scale={scale:g}"],
                 curve=CONVERGE_CURVE if curve else (), curve_n=CONVERGE_CURVE_N if curve else None)
    c.curve_test = curve
    c.tags.update({"lr": lr, "sample_scale": scale})
    return c


SETTINGS = tuple(TEACHERS)   # ("A", "B")


def curve_cells(grid: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell]:
    """Stage 2: the base seed of every main method in ``settings`` with its grid-chosen settings, with curves
    (every point scored on VAL_SEED for the budget and on the cell's own test seed for the results)."""
    return [_converged(s, m, base, choose_hparams(grid, s, m), curve=True) for s in settings for m in MAIN_METHODS]


def seed_cells(grid: dict[str, dict], seed0: dict[str, dict], base: int = 0,
               settings: tuple[str, ...] = SETTINGS) -> list[Cell]:
    """Stage 3: more seeds at the budget: SEEDS_BEST for DanceOPD and the strongest baseline of each setting (by
    seed-0 validation quality at the budget), SEEDS_OTHER for the other main methods. Seed 0's result is its
    curve cell's test score at the budget."""
    cells = []
    for s in settings:
        b = budget(seed0, s)
        best = strongest_baseline(seed0, s, b)
        for m in MAIN_METHODS:
            n = SEEDS_BEST if m in ("danceopd", best) else SEEDS_OTHER
            cells += [_converged(s, m, base + i, choose_hparams(grid, s, m), steps=b) for i in range(1, n)]
    return cells


def extend_cells(grid: dict[str, dict], seed0: dict[str, dict], base: int = 0) -> list[Cell]:
    """Stage 2b: in each setting where a seed-0 curve still rises at its end, all four main curves continue to
    EXTEND_STEPS, each from the finished run of its curve cell (exact resume: the same student a run of that
    length trains), scored at EXTEND_CURVE; the points up to CONVERGE_STEPS are taken over from the curve cell."""
    cells = []
    for s in SETTINGS:   # seed0 holds the curves of the settings being planned
        if all(p is not None for p in plateaus(seed0, s).values()):
            continue
        for m in MAIN_METHODS:
            c = _converged(s, m, base, choose_hparams(grid, s, m), curve=True, steps=EXTEND_STEPS)
            done = next(r for r in seed0.values() if r["id"] == c.id)   # the finished curve cell, as it ran
            c.id += f"/extend={EXTEND_STEPS}"
            c.curve = list(EXTEND_CURVE)
            c.resume_from = cell_dirname(done["id"], done["key"])
            c.tags["extend"] = EXTEND_STEPS
            cells.append(c)
    return cells


def _done(recs: dict[str, dict], cells: list[Cell]) -> dict[str, dict] | None:
    """The records of ``cells`` if every one has finished, else None."""
    got = {c.id: recs[c.id] for c in cells if recs.get(c.id, {}).get("status") == "done"}
    return got if len(got) == len(cells) else None


def edge_stage(recs: dict[str, dict], base: int = 0) -> list[Cell] | None:
    """Stage 1b once the grid is complete (None before; [] when no method's best lr is at an edge)."""
    grid = _done(recs, grid_cells(base))
    return None if grid is None else edge_cells(grid, base)


# Stages 2-4 are planned per setting: a setting's curves, longer curves and seeds follow one another without
# waiting for the other setting, so setting A's final comparison does not wait for setting B's curves.
def curve_stage(recs: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 2 of ``settings`` once the grid and its edge points are complete (None before)."""
    grid = full_grid(recs, base)
    return None if grid is None else curve_cells(grid, base, settings)


def _curves(recs, base, settings):
    grid = full_grid(recs, base)
    seed0 = None if grid is None else _done(recs, curve_cells(grid, base, settings))
    return grid, seed0


def extend_stage(recs: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 2b of ``settings`` once their curve cells are complete (None before; [] when every curve flattened in
    time)."""
    grid, seed0 = _curves(recs, base, settings)
    return None if seed0 is None else extend_cells(grid, seed0, base)


def _budgeted(recs, base, settings):
    """(grid, the longest seed-0 curves) of ``settings`` once their curves and longer curves are complete, else
    None: what the seeds and the rest are planned from."""
    grid, seed0 = _curves(recs, base, settings)
    if seed0 is None:
        return None
    extended = _done(recs, extend_cells(grid, seed0, base))
    return None if extended is None else (grid, longest_curves({**seed0, **extended}))


def seed_stage(recs: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 3 of ``settings`` once their seed-0 curves are complete, longer curves included (None before)."""
    got = _budgeted(recs, base, settings)
    return None if got is None else seed_cells(*got, base, settings)


def short_rest_stage(recs: dict[str, dict], base: int = 0,
                     settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 4a of ``settings``: weight merging, the dense baselines at DanceOPD's wall time at the budget, and with
    setting A the ablations (None before the budget is known)."""
    got = _budgeted(recs, base, settings)
    if got is None:
        return None
    seed0 = got[1]
    rest = [_distill(s, "weight_merge", base) for s in settings]
    rest += [_distill(s, m, base, steps=dense_steps(m, budget(seed0, s))) for s in settings for m in DENSE_COST]
    return rest + (ablation_cells(base) if "A" in settings else [])


def matched_stage(recs: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 4b of ``settings``: the dense baselines at matched training samples (the budget's steps): hours per
    cell on 2 cores, minutes on a GPU, so last in line (None before the budget is known)."""
    got = _budgeted(recs, base, settings)
    return None if got is None else [_distill(s, m, base, steps=budget(got[1], s), tag_extra={"matched": "samples"})
                                     for s in settings for m in DENSE_COST]


def rest_stage(recs: dict[str, dict], base: int = 0, settings: tuple[str, ...] = SETTINGS) -> list[Cell] | None:
    """Stage 4 of ``settings``: 4a then 4b (None before the budget is known)."""
    short = short_rest_stage(recs, base, settings)
    return None if short is None else short + matched_stage(recs, base, settings)


def _only(stage, s):
    return functools.partial(stage, settings=(s,))


def _setting_stages(s: str) -> list[tuple]:
    """(stage, what it plans) of setting ``s`` up to its comparison, each planned from the one before."""
    return [(_only(curve_stage, s), f"setting {s}: the curves (seed 0 of the 4 main methods to 3,000 steps)"),
            (_only(extend_stage, s), f"setting {s}: longer curves (to 6,000 steps, if a curve still rises at 3,000)"),
            (_only(seed_stage, s), f"setting {s}: the seeds at the budget")]


def _rest_stages(s: str) -> list[tuple]:
    return [(_only(short_rest_stage, s), f"setting {s}: weight merging, the dense baselines at matched wall time"
             + (" and the ablations" if s == "A" else "")),
            (_only(matched_stage, s), f"setting {s}: the dense baselines at matched samples")]


def run_later_stages(recs: dict[str, dict], base: int, run, jobs: int = 1,
                     finished=None) -> tuple[list[Cell], list[str]]:
    """Plan and run the full preset's stages after the grid: ``run(cells) -> {id: record}`` runs (or loads) a
    batch of cells and ``recs`` is updated with what it returns. With one job (a CPU), what the comparison needs
    comes first: setting A's curves, longer curves and seeds, then B's, then each setting's weight merge, dense
    baselines at matched wall time and ablations, and last each setting's dense baselines at matched samples (none of
    these is needed for the verdict). With several
    (a GPU) each setting advances in a thread of its own, at its own pace: a setting's next stage is handed over as
    soon as its stage before has finished, as ``run(cells, priority)``: 0 for what the verdict needs (curves,
    longer curves, seeds), 1 for the rest, so one setting's seeds overtake the other's ablations in a shared pool.
    ``finished(cells) -> {id: record}`` (the cells already finished or published; nothing is run) lets a setting
    skip over its finished stages; without it every stage is handed to ``run``. Returns (every cell planned, what
    could not be planned yet: a stage waits for the one before it to finish)."""
    import threading

    lock = threading.RLock()   # planning reads ``recs`` while the other setting's thread adds to it
    planned: list[Cell] = []
    pending: dict[str | None, list[str]] = {}
    waiting: set[str | None] = set()   # None: the edge stage (every setting waits for it)

    def advance(s: str | None, stages: list[tuple], call) -> None:
        """Run the (stage, what, priority) of ``stages`` in order, each planned from the ones before."""
        for i, (stage, _, priority) in enumerate(stages):
            with lock:
                nxt = None if (None in waiting or s in waiting) else stage(recs, base)
                if nxt is None:   # the stage before it has not finished: so do all later ones
                    waiting.add(s)
                    pending.setdefault(s, []).extend(w for _, w, _ in stages[i:])
                    return
                got = finished(nxt) if finished and nxt else {}
                recs.update(got)
                planned.extend(nxt)
            if any(c.id not in got for c in nxt):   # work to do: the next stage waits for it
                done = call(nxt, priority)
                with lock:
                    recs.update(done)

    def verdict(s):
        return [(st, w, 0) for st, w in _setting_stages(s)]

    def rest(s):
        return [(st, w, 1) for st, w in _rest_stages(s)]

    edge = [(edge_stage, "one learning rate past the grid's edge for methods whose best is at an edge", 0)]
    if jobs == 1:
        def call(cells, priority):
            return run(cells)
        # every setting's short rest before any setting's dense runs at matched samples (hours each on a CPU)
        for s, stages in [(None, edge), *((s, verdict(s)) for s in SETTINGS), *((s, rest(s)[:1]) for s in SETTINGS),
                          *((s, rest(s)[1:]) for s in SETTINGS)]:
            advance(s, stages, call)
    else:
        advance(None, edge, run)
        errors: list[BaseException] = []

        def pipe(s):
            try:
                advance(s, verdict(s) + rest(s), run)
            except BaseException as e:   # raised again in the caller's thread
                errors.append(e)
        # daemon threads: an interrupted reproduce (Ctrl-C, a time limit) exits without waiting for them
        threads = [threading.Thread(target=pipe, args=(s,), name=f"setting-{s}", daemon=True) for s in SETTINGS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return planned, [w for s in (None, *SETTINGS) for w in pending.get(s, [])]


def later_stage_ids(base: int = 0) -> set[str]:
    """Ids of every cell a later stage could plan (for checking ``--force`` ids before any work)."""
    ids = {_distill(s, m, base + i).id for s in ("A", "B") for m in METHODS_ALL for i in range(SEEDS_BEST)}
    ids |= {f"{s}/{m}/s{base}/extend={EXTEND_STEPS}" for s in ("A", "B") for m in MAIN_METHODS}
    ids |= {f"{s}/{m}/s{base}/matched=samples" for s in ("A", "B") for m in DENSE_COST}
    ids |= {_grid_cell(s, m, lr, base).id for s in ("A", "B") for m in MAIN_METHODS
            for lr in (LR_GRID[0] / EDGE_FACTOR, LR_GRID[-1] * EDGE_FACTOR)}
    return ids | {c.id for c in ablation_cells(base)}
