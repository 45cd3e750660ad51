"""The distillation trainer: models, routes and data for one run, and the ``Task`` every method trains through the
one loop (``train/loop.py``).

``danceopd distill --config configs/world/<setting>_<method>.yaml [--set a.b=c] [--out DIR] [--resume|--overwrite]``

Per optimizer step: the main process draws the route (hard routing: one route per step, shared by all
accumulation micro-batches; ``group`` or a method with ``group_routes``: every route, losses weight-averaged) and
broadcasts it; each micro-batch draws conditions from that route's bucket, the method computes its loss against
the frozen teacher fields, and the student (full or PEFT LoRA) takes a step. Checkpoints are atomic and resume is
exact (routes, data streams, RNG, optimizer, scheduler, EMA, counters).

The config: this module's sections (routes, student, teacher guidance, merge, train, sampling, diffusers) plus
every section a registered method declares (``methods.base.SECTIONS``: ``rollout:``, ``query:``, ``offpolicy:``,
``flowopd:`` ...), parsed into ``DistillConfig.sections``; the method gets its own typed ``Config`` from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..backends.base import Backend
from ..backends.diffusers import DiffusersOptions, check_precision
from ..backends.registry import get_family
from ..backends.world import SamplingConfig
from ..core import Route, RouteSampler
from ..errors import UserError
from ..methods import METHODS, SECTIONS, Method, StepContext, TeacherField
from ..util.atomic import write_json_atomic
from ..util.lora import LoraConfig
from ..world.sampler import BUCKETS
from .checkpoint import newest_step
from .common import start_run
from .data import make_data
from .loop import finish, prepare_trainables, run_loop


@dataclass
class RouteConfig:
    name: str = ""
    bucket: str = "t2i"
    teacher: str = ""
    weight: float = 1.0
    csv: str | None = None

    def validate(self):
        if not self.name or not self.teacher:
            raise ValueError("every route needs a name and a teacher")
        if self.bucket not in BUCKETS:
            raise ValueError(f"route {self.name!r}: bucket must be one of {', '.join(BUCKETS)}, got {self.bucket!r}")
        if self.weight <= 0:
            raise ValueError(f"route {self.name!r}: weight must be > 0")


@dataclass
class TeacherGuidance:
    text_scale: float = 3.0      # alpha: the teacher target is the CFG field v_u + alpha (v_c - v_u)
    image_scale: float = 1.0


@dataclass
class StudentConfig:
    init: str = "world:t2i"      # world:<name> / file / run folder / "merged" (weight-merged teachers)
    freeze_text: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class MergeConfig:
    coefficients: list[float] = field(default_factory=list)   # one per route teacher; default equal


@dataclass
class DistillTrain:
    steps: int = 300
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    mixed_precision: str = "no"
    routing: str = "hard"
    ema_decay: float = 0.0
    text_dropout: float = 0.1
    log_every: int = 10
    sample_every: int = 0
    checkpoint_every: int = 50
    checkpoints_total_limit: int = 2
    nan_policy: str = "stop"
    max_skipped_steps: int = 10
    threads: int = 0

    def validate(self):
        if min(self.steps, self.batch_size, self.grad_accum, self.log_every, self.checkpoint_every) < 1:
            raise ValueError("train.steps, batch_size, grad_accum, log_every, checkpoint_every must be >= 1")
        if not 0 < self.lr < 1:
            raise ValueError(f"train.lr must be in (0, 1), got {self.lr}")
        if self.routing not in ("hard", "group"):
            raise ValueError("train.routing must be 'hard' or 'group'")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError("train.mixed_precision must be 'no' or 'bf16'")
        if self.nan_policy not in ("stop", "skip"):
            raise ValueError("train.nan_policy must be 'stop' or 'skip'")


@dataclass
class DistillConfig:
    name: str = "distill"
    backend: str = "world"     # model family: world | sd3 | zimage | flux_kontext (backends.registry)
    setting: str = ""
    method: str = "danceopd"
    seed: int = 0
    routes: list[RouteConfig] = field(default_factory=list)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_guidance: TeacherGuidance = field(default_factory=TeacherGuidance)
    merge: MergeConfig = field(default_factory=MergeConfig)
    train: DistillTrain = field(default_factory=DistillTrain)
    sampling: SamplingConfig | None = None    # the exported student's sampler (default: method-dependent)
    diffusers: DiffusersOptions = field(default_factory=DiffusersOptions)   # sd3 / zimage / flux_kontext only
    sections: dict[str, Any] = field(default_factory=dict, init=False)   # the methods' sections, by YAML key

    open_sections: ClassVar = staticmethod(lambda: SECTIONS)

    def as_dict(self) -> dict:
        """The config as the YAML lays it out (method sections at the top level): ``run_config.json`` and the
        exported model's header, so run folders started before the sections moved still resume."""
        d = dataclasses.asdict(self)
        d.update(d.pop("sections"))
        return d

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.routes:
            raise ValueError("routes: at least one route is needed")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"routes: duplicate route names {names}")
        if self.merge.coefficients and len(self.merge.coefficients) != len(self.routes):
            raise ValueError(f"merge.coefficients: need {len(self.routes)} values (one per route)")
        method = METHODS[self.method]
        method().check(method.config_from(self.sections), self.train.batch_size)
        if self.backend != "world":
            check_precision(self.diffusers.dtype, self.train.mixed_precision)


def _previous_sec_per_step(out: Path, steps: int) -> float | None:
    """A run resumed at its last step times no step: keep the seconds per step its earlier process measured."""
    p = out / "final.json"
    old = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    return old.get("sec_per_step") if old.get("steps") == steps else None


class DistillTask:
    """The distillation side of the loop (``train.loop.Task``): routes drawn per step and broadcast, each route's
    micro-batch scored by the method, losses weight-averaged over the step's routes."""

    tracker = "distill"

    def __init__(self, cfg: DistillConfig, method: Method, ctx: StepContext, routes: list[Route],
                 sampler: RouteSampler, data: dict, accelerator, resolution: int):
        self.cfg, self.method, self.ctx, self.routes, self.sampler, self.data = cfg, method, ctx, routes, sampler, data
        self.accelerator, self.resolution = accelerator, resolution
        self.name, self.desc = cfg.method, f"{cfg.method} {cfg.setting}".strip()
        self.picked: list[int] = []
        self.infos: dict = {}
        self.losses: list[tuple[str, torch.Tensor]] = []
        self.debug = os.environ.get("DANCEOPD_DEBUG_RANKS") == "1"   # tests: per-rank route trace + weights hash
        self.trace: list[dict] = []

    def tracker_config(self) -> dict:
        return {"method": self.cfg.method, "setting": self.cfg.setting}

    def begin_step(self, step: int) -> None:
        from accelerate.utils import broadcast_object_list

        picked = [self.sampler.sample() if self.accelerator.is_main_process else None]
        self.picked = broadcast_object_list(picked, from_process=0)[0]   # every rank trains the same route
        self.infos, self.losses = {}, []
        if self.debug:
            self.trace.append({"step": step + 1, "route": self.label()})

    def micro_loss(self) -> torch.Tensor:
        total = 0.0
        wsum = sum(self.routes[i].weight for i in self.picked)
        for i in self.picked:
            r = self.routes[i]
            batch = self.data[r.name].next(self.cfg.train.batch_size)
            with self.accelerator.autocast():
                loss, info = self.method.loss(self.ctx, r, batch)
            total = total + loss * (r.weight / wsum)
            self.infos = {**self.infos, **{f"{k}/{r.name}": v for k, v in info.items()}}
            self.losses.append((r.name, loss.detach()))
        return total

    def label(self) -> str:
        return "+".join(self.routes[i].name for i in self.picked)

    def record(self) -> tuple[dict, dict]:
        extra = {"route": self.label(), **{f"loss/{n}": float(v) for n, v in self.losses}, **self.infos}
        return extra, {"route": self.label()}

    def end_step(self, step: int, loss: torch.Tensor) -> None:
        if self.debug:
            self.trace[-1]["loss"] = float(loss.detach())

    def sample(self, path: Path, step: int) -> None:
        _sample_grid(self.ctx.student, self.cfg, path, self.accelerator, step, self.resolution)

    def state_dict(self) -> dict:
        rs = self.sampler.state_dict()
        rs["generator_state"] = rs["generator_state"].tolist()
        return {"data": {k: d.state_dict() for k, d in self.data.items()}, "routes": rs}

    def load_state_dict(self, state: dict) -> None:
        for k, d in self.data.items():
            d.load_state_dict(state["data"][k])
        self.sampler.load_state_dict({**state["routes"], "generator_state": torch.tensor(
            state["routes"]["generator_state"], dtype=torch.uint8)})


def _check_data(cfg: DistillConfig, data_res: int | None) -> None:
    """Validate the routes' dataset CSVs (and that ShapesWorld can render the family's size) before any load."""
    for r in cfg.routes:
        if r.csv:
            make_data(r.bucket, r.csv, 0, data_res)  # validates the CSV before any model loads
        elif data_res not in (None, 32, 64):
            raise UserError(f"route {r.name!r}: no csv, and ShapesWorld renders only 32 or 64 px, not "
                            f"diffusers.resolution={data_res}; give the route a dataset CSV of that size")
    if cfg.train.sample_every and data_res not in (None, 32, 64):
        raise UserError(f"train.sample_every draws ShapesWorld grids (32 or 64 px), not diffusers.resolution="
                        f"{data_res}; set it to 0 and sample the exported run with danceopd sample")


def train_distill(cfg: DistillConfig, out: Path, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, stop_after: int | None = None) -> Path:
    from accelerate.utils import set_seed

    out = Path(out)
    family = get_family(cfg.backend).configure(cfg.diffusers)
    method = METHODS[cfg.method]()
    init = method.student_init or cfg.student.init
    for r in cfg.routes:
        family.check(r.teacher)
    if init != "merged":
        family.check(init)
    _check_data(cfg, family.data_resolution)
    if resume and not overwrite and (at := newest_step(out)) > cfg.train.steps:
        raise UserError(f"{out}: its newest checkpoint is at step {at}, past train.steps={cfg.train.steps}; a run "
                        f"does not go back: resume with train.steps >= {at}, or start a new --out")
    accelerator, resuming = start_run(out, resume, overwrite, cfg.as_dict(), cfg.train.grad_accum,
                                      cfg.train.mixed_precision, cfg.train.threads)
    set_seed(cfg.seed, device_specific=True)  # rank r seeds cfg.seed + r: ranks draw different noise / queries
    teacher_be: dict[str, Backend] = {r.name: family.load_teacher(r.teacher, accelerator.device) for r in cfg.routes}
    needs_edit = any(r.bucket != "t2i" for r in cfg.routes)
    student = family.build_student(init, [teacher_be[r.name] for r in cfg.routes], needs_edit,
                                   cfg.merge.coefficients or None, cfg.student.freeze_text,
                                   lora=cfg.student.lora if method.trains else None)
    resolution = next(iter(teacher_be.values())).resolution
    sampling = cfg.sampling or SamplingConfig(steps=16, text_scale=method.student_text_scale)
    student.sampling = sampling
    t_start = time.time()
    meta = {"name": cfg.name, "method": cfg.method, "setting": cfg.setting, "resolution": resolution,
            "config": json.dumps(cfg.as_dict())}

    if not method.trains:  # weight merging: export the merged weights, done
        if accelerator.is_main_process:
            family.export(student, out, sampling, {**meta, "steps": 0}, lora=False)
            write_json_atomic(out / "final.json", {"steps": 0, "wall_time_s": round(time.time() - t_start, 2),
                                                   "sec_per_step": 0.0})
        return out

    t = cfg.train
    warm = t.warmup_steps
    tr = prepare_trainables(accelerator, student.model, t.lr, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0,
                            weight_decay=t.weight_decay, ema_decay=t.ema_decay if t.ema_decay > 0 else None)
    student.model = tr.model
    teachers = {r.name: TeacherField(teacher_be[r.name], cfg.teacher_guidance.text_scale,
                                     cfg.teacher_guidance.image_scale) for r in cfg.routes}
    routes = [Route(r.name, r.bucket, r.name, r.weight) for r in cfg.routes]
    mode = "group" if (t.routing == "group" or method.group_routes) else "hard"
    sampler = RouteSampler(routes, seed=cfg.seed, mode=mode)
    data = {r.name: make_data(r.bucket, r.csv, cfg.seed * 1000 + 31 * i + 7 + 100003 * accelerator.process_index,
                              resolution) for i, r in enumerate(cfg.routes)}
    ctx = StepContext(student, teachers, method.config_from(cfg.sections), accelerator.device,
                      text_dropout=t.text_dropout, route_weights={r.name: r.weight for r in cfg.routes})
    task = DistillTask(cfg, method, ctx, routes, sampler, data, accelerator, resolution)
    res = run_loop(accelerator, tr, task, t, t.grad_clip, out, resuming, progress, stop_after)
    if task.debug:
        _dump_rank_debug(out, accelerator, tr.model, task.trace)
    if res.step >= t.steps and accelerator.is_main_process:
        if tr.ema is not None:
            tr.ema.swap(tr.named)
        try:
            family.export(student, out, sampling, {**meta, "steps": t.steps, "wall_time_s": round(res.wall(), 1)},
                          lora=cfg.student.lora.enabled)
        finally:
            if tr.ema is not None:
                tr.ema.swap(tr.named)
        sec = float(np.median(res.step_times)) if res.step_times else _previous_sec_per_step(out, t.steps)
        write_json_atomic(out / "final.json", {"steps": t.steps, "sec_per_step": sec,
                                               "wall_time_s": round(res.wall(), 1)})
    finish(accelerator)
    return out


@torch.no_grad()
def _dump_rank_debug(out: Path, accelerator, model, trace: list[dict]) -> None:
    """``DANCEOPD_DEBUG_RANKS=1``: write ``debug_rank<i>.json`` (routes and loss per step, sha256 of the live
    weights) so tests can check that all ranks trained the same routes and ended with identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(accelerator.unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    write_json_atomic(out / f"debug_rank{accelerator.process_index}.json",
                      {"process_index": accelerator.process_index, "num_processes": accelerator.num_processes,
                       "initial_seed": torch.initial_seed(), "steps": trace, "weights_sha256": h.hexdigest()})


@torch.no_grad()
def _sample_grid(student, cfg: DistillConfig, path: Path, accelerator, step: int, res: int):
    from PIL import Image

    from ..world import DEFAULT_WORLD, render_batch, sample_example

    rng = np.random.default_rng(1234)
    rows = []
    for r in cfg.routes:
        exs = [sample_example(rng, DEFAULT_WORLD.with_resolution(res), r.bucket) for _ in range(6)]
        b = render_batch(exs, DEFAULT_WORLD.with_resolution(res))
        src = b.source if (b.source is not None and student.is_edit) else None
        imgs = student.sample([e.prompt for e in exs], src, seed=0)
        rows.append(np.concatenate(list(imgs), axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", grid, step, dataformats="HWC")
