"""The cells of a reproduction: teacher evaluations, teacher trainings (optional), distillation runs, ablations.

A cell is identified by a readable ``id`` and keyed by everything that determines its result (config file
contents after includes and overrides, evaluation settings, seed); a changed config is a new cell, so finished
results are reused and never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "world"
METHODS_ALL = ("joint_sft", "weight_merge", "offpolicy", "soft_mix", "diffusionopd", "flowopd", "danceopd")
TEACHERS = {"A": ("t2i", "edit"), "B": ("local_edit", "global_edit")}


@dataclass
class Cell:
    id: str
    kind: str                         # "teacher" (evaluate a model) | "distill" | "sft" (train a teacher)
    model: str | None = None          # teacher cells: model spec
    config: str | None = None         # distill / sft cells: config file name under configs/world
    overrides: list[str] = field(default_factory=list)
    suite: str = "all"
    eval_n: int | None = None         # None = the suite's default
    seed: int = 0
    curve: list[int] = field(default_factory=list)   # training steps at which to evaluate (curves)
    curve_n: int | None = None
    tags: dict = field(default_factory=dict)
    teacher_runs: dict = field(default_factory=dict)  # --retrain-teachers: {world:<name>: run folder}

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("tags")
        if not d["teacher_runs"]:  # shipped teachers: identified by their sha256 below
            d.pop("teacher_runs")
        if self.config:
            import yaml

            from ..config import _resolve_includes  # the config as loaded, includes merged

            path = CONFIG_DIR / self.config
            d["config_content"] = _resolve_includes(yaml.safe_load(path.read_text(encoding="utf-8")), path, 0)
        d["version"] = __version__
        d["teachers"] = _shipped_shas(json.dumps(d, default=str))
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def dirname(self) -> str:
        return self.id.replace("/", "__").replace("=", "-") + "--" + self.key()


def _shipped_shas(text: str) -> dict[str, str | None]:
    """sha256 (from the manifest) of every shipped ``world:<name>`` model a cell mentions, so a re-shipped teacher
    makes every cell that depends on it a new cell."""
    import re

    from ..backends.registry import ASSET_DIR

    path = ASSET_DIR / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    names = sorted(set(re.findall(r"world:([A-Za-z0-9_]+)", text)))
    return {n: manifest.get(n, {}).get("sha256") for n in names}


def _distill(setting, method, seed, steps=None, eval_n=None, curve=(), curve_n=None, extra=(), tag_extra=None,
             suite=None):
    ov = [f"seed={seed}"] + ([f"train.steps={steps}"] if steps else []) + list(extra)
    cid = f"{setting}/{method}/s{seed}" + ("" if not tag_extra else "/" + ",".join(
        f"{k}={v}" for k, v in tag_extra.items()))
    return Cell(cid, "distill", config=f"{setting}_{method}.yaml", overrides=ov,
                suite=suite or ("all" if setting == "A" else "edit"), eval_n=eval_n, seed=seed,
                curve=list(curve), curve_n=curve_n,
                tags={"setting": setting, "method": method, "seed": seed, **(tag_extra or {})})


def teacher_cells(eval_n=None, names=("t2i", "edit", "local_edit", "global_edit"), model_prefix="world:"):
    # the T2I base has no source-image input: it is scored on the T2I suite only; edit teachers on both (their
    # T2I scores measure the interference of edit fine-tuning)
    return [Cell(f"teacher/{n}", "teacher", model=f"{model_prefix}{n}", suite="t2i" if n == "t2i" else "all",
                 eval_n=eval_n, tags={"teacher": n}) for n in names]


def quick_plan(seed: int = 0) -> list[Cell]:
    """The comparison table's four rows in setting A, one seed, reduced sample counts."""
    n, steps = 8, 120
    cells = teacher_cells(eval_n=n, names=TEACHERS["A"])
    for m in ("joint_sft", "offpolicy", "danceopd"):
        cells.append(_distill("A", m, seed, steps=steps, eval_n=n))
    return cells


# Training steps of the main cells of the full preset. The dense on-policy baselines cost far more per step than
# DanceOPD: `python scripts/bench_distill.py --threads 2 --iters 3` (batch 32, 8 rollout steps, setting A) measured
# DanceOPD 0.675 s, Flow-OPD 3.18 s (4.7x), DiffusionOPD 11.8 s (17.4x). To keep the full preset inside its 6-hour
# budget they get the steps that cost about 2.5x DanceOPD's 400-step training time; the report prints every row's
# steps and s/step next to its scores.
FULL_STEPS = {"diffusionopd": 60, "flowopd": 200}
# Main rows first (so an interrupted run has the comparison table earliest), cheap before expensive.
FULL_ORDER = ("danceopd", "joint_sft", "offpolicy", "weight_merge", "soft_mix", "flowopd", "diffusionopd")
ABLATION_STEPS = 200
ABLATION_EVAL_N = 40
CURVE = (100, 200, 300)
CURVE_N = 16


def full_plan_stage1(seed: int = 0) -> list[Cell]:
    """Every method in both settings (seed 0), curves for the main rows, and the ablations (setting A)."""
    cells = teacher_cells()
    for s in ("A", "B"):
        for m in FULL_ORDER:
            main = m in ("danceopd", "joint_sft", "offpolicy")
            steps = FULL_STEPS.get(m)
            cells.append(_distill(s, m, seed, steps=steps, curve=CURVE if main else (),
                                  curve_n=CURVE_N if main else None))
    A, abl_steps, n = "A", ABLATION_STEPS, ABLATION_EVAL_N

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


def full_plan_stage2(scores: dict[str, dict], seeds=(1, 2)) -> list[Cell]:
    """Extra seeds for DanceOPD and the two strongest baselines per setting (ranked on seed-0 results)."""
    cells = []
    for s in ("A", "B"):
        ranked = []
        for m in METHODS_ALL:
            if m == "danceopd":
                continue
            sc = scores.get(f"{s}/{m}/s0")
            if sc is not None:
                ranked.append((overall_quality(sc, s), m))
        best = [m for _, m in sorted(ranked, reverse=True)[:2]]
        for m in ["danceopd", *best]:
            for seed in seeds:
                cells.append(_distill(s, m, seed, steps=FULL_STEPS.get(m)))
    return cells


def stage2_candidate_ids(seeds=(1, 2)) -> set[str]:
    """Ids of every cell :func:`full_plan_stage2` could plan (which ones depends on the seed-0 scores)."""
    return {_distill(s, m, seed, steps=FULL_STEPS.get(m)).id for s in ("A", "B") for m in METHODS_ALL
            for seed in seeds}


def overall_quality(scores: dict, setting: str) -> float:
    """One 0-10 number per model: setting A = mean of 10 x GenEval overall and GEdit average O; setting B = GEdit
    average O. Used to rank baselines and as the comparison table's overall column."""
    o = (scores.get("gedit") or {}).get("avg", {}).get("o")
    g = (scores.get("geneval") or {}).get("overall")
    if setting == "A" and g is not None and o is not None:
        return (10 * g + o) / 2
    return o if o is not None else float("nan")
