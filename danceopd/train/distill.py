"""The distillation engine: one Accelerate loop for every method (DanceOPD and all baselines).

``danceopd distill --config configs/world/<setting>_<method>.yaml [--set a.b=c] [--out DIR] [--resume|--overwrite]``

Per optimizer step: the main process draws the route (hard routing: one route per step, shared by all
accumulation micro-batches; ``group`` or a method with ``group_routes``: every route, losses weight-averaged) and
broadcasts it; each micro-batch draws conditions from that route's bucket, the method computes its loss against
the frozen teacher fields, and the student (full or PEFT LoRA) takes a step. Checkpoints are atomic and resume is
exact (routes, data streams, RNG, optimizer, scheduler, EMA, counters).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backends.diffusers_common import DiffusersOptions
from ..backends.world import SamplingConfig
from ..core import QUERY_BIASES, Route, RouteSampler
from ..errors import UserError
from ..methods import METHODS, MethodConfig, StepContext, TeacherField
from ..world.sampler import BUCKETS
from .checkpoint import latest_good, load_checkpoint, write_json_atomic
from .common import (
    EMA,
    LoraConfig,
    MetricsLog,
    add_lora,
    check_finite,
    checkpoint,
    handle_nonfinite,
    kill_point,
    log_step,
    start_run,
)
from .data import make_data


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
class RolloutConfig:
    steps: int = 8
    shift: float = 1.0
    text_scale: float = 1.0      # guidance of the student's own rollout (beta; 1 = CFG absorbed)

    def validate(self):
        if not 1 <= self.steps <= 256:
            raise ValueError("rollout.steps must be in [1, 256]")


@dataclass
class QueryConfig:
    k: int = 1
    bias: str = "low_t"

    def validate(self):
        if self.bias not in QUERY_BIASES:
            raise ValueError(f"query.bias must be one of {', '.join(QUERY_BIASES)}, got {self.bias!r}")
        if self.k < 1:
            raise ValueError("query.k must be >= 1")


@dataclass
class StudentConfig:
    init: str = "world:t2i"      # world:<name> / file / run folder / "merged" (weight-merged teachers)
    freeze_text: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class OffPolicyConfig:
    states: str = "noised_data"

    def validate(self):
        if self.states not in ("noised_data", "teacher_rollout"):
            raise ValueError("offpolicy.states must be 'noised_data' or 'teacher_rollout'")


@dataclass
class FlowOPDConfig:
    eta: float = 0.7
    group_size: int = 4
    clip: float = 0.2


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
    backend: str = "world"     # model family: world | sd3 | zimage | flux_kontext
    setting: str = ""
    method: str = "danceopd"
    seed: int = 0
    routes: list[RouteConfig] = field(default_factory=list)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher_guidance: TeacherGuidance = field(default_factory=TeacherGuidance)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    offpolicy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    flowopd: FlowOPDConfig = field(default_factory=FlowOPDConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    train: DistillTrain = field(default_factory=DistillTrain)
    sampling: SamplingConfig | None = None    # the exported student's sampler (default: method-dependent)
    diffusers: DiffusersOptions = field(default_factory=DiffusersOptions)   # sd3 / zimage / flux_kontext only

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
        if self.method == "flowopd" and self.train.batch_size % self.flowopd.group_size:
            raise ValueError("flowopd: train.batch_size must be a multiple of flowopd.group_size")
        if self.backend != "world":
            from ..backends.diffusers_common import check_precision

            check_precision(self.diffusers.dtype, self.train.mixed_precision)


def method_config(cfg: DistillConfig) -> MethodConfig:
    return MethodConfig(
        rollout_steps=cfg.rollout.steps, rollout_shift=cfg.rollout.shift, rollout_text_scale=cfg.rollout.text_scale,
        k=cfg.query.k, bias=cfg.query.bias, offpolicy_states=cfg.offpolicy.states, eta=cfg.flowopd.eta,
        group_size=cfg.flowopd.group_size, clip=cfg.flowopd.clip, text_dropout=cfg.train.text_dropout,
        soft_weights={r.name: r.weight for r in cfg.routes},
    )


def train_distill(cfg: DistillConfig, out: Path, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, stop_after: int | None = None) -> Path:
    from accelerate.utils import broadcast_object_list, set_seed
    from tqdm import tqdm

    out = Path(out)
    from ..backends.registry import get_family

    family = get_family(cfg.backend)
    if hasattr(family, "with_options"):       # diffusers families: resolution, dtypes, placement, ...
        family = family.with_options(cfg.diffusers)
    own_lora = getattr(family, "handles_lora", False)   # the family adds the student's LoRA itself
    for r in cfg.routes:
        family.check(r.teacher)
    if cfg.student.init != "merged" and cfg.method != "weight_merge":
        family.check(cfg.student.init)
    data_res = getattr(getattr(family, "opts", None), "resolution", None)   # diffusers families: fixed size
    for r in cfg.routes:
        if r.csv:
            make_data(r.bucket, r.csv, 0, data_res)  # validates the CSV before any model loads
        elif data_res not in (None, 32, 64):
            raise UserError(f"route {r.name!r}: no csv, and ShapesWorld renders only 32 or 64 px, not "
                            f"diffusers.resolution={data_res}; give the route a dataset CSV of that size")
    if cfg.train.sample_every and data_res not in (None, 32, 64):
        raise UserError(f"train.sample_every draws ShapesWorld grids (32 or 64 px), not diffusers.resolution="
                        f"{data_res}; set it to 0 and sample the exported run with danceopd sample")
    accelerator, resuming = start_run(out, resume, overwrite, dataclasses.asdict(cfg), cfg.train.grad_accum,
                                      cfg.train.mixed_precision, cfg.train.threads)
    set_seed(cfg.seed, device_specific=True)  # rank r seeds cfg.seed + r: ranks draw different noise / queries
    method = METHODS[cfg.method]()
    teacher_be = {r.name: family.load_teacher(r.teacher, accelerator.device) for r in cfg.routes}
    needs_edit = any(r.bucket != "t2i" for r in cfg.routes)
    init = "merged" if cfg.method == "weight_merge" else cfg.student.init
    lora_kw = {"lora": cfg.student.lora if method.trains else None} if own_lora else {}
    student = family.build_student(init, [teacher_be[r.name] for r in cfg.routes], needs_edit,
                                   cfg.merge.coefficients or None, cfg.student.freeze_text, **lora_kw)
    resolution = next(iter(teacher_be.values())).resolution
    sampling = cfg.sampling or SamplingConfig(steps=16, text_scale=method.student_text_scale)
    student.sampling = sampling
    t_start = time.time()
    meta = {"name": cfg.name, "method": cfg.method, "setting": cfg.setting, "resolution": resolution,
            "config": json.dumps(dataclasses.asdict(cfg))}

    if not method.trains:  # weight merging: export the merged weights, done
        if accelerator.is_main_process:
            family.export(student, out, sampling, {**meta, "steps": 0}, lora=False)
            write_json_atomic(out / "final.json", {"steps": 0, "wall_time_s": round(time.time() - t_start, 2),
                                                   "sec_per_step": 0.0})
        return out

    net = student.model
    if cfg.student.lora.enabled and not own_lora:
        net = add_lora(net, cfg.student.lora)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warm = cfg.train.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    model, opt, sched = accelerator.prepare(net, opt, sched)
    named = [(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    ema = EMA(named, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    student.model = model
    teachers = {r.name: TeacherField(teacher_be[r.name], cfg.teacher_guidance.text_scale,
                                     cfg.teacher_guidance.image_scale) for r in cfg.routes}
    routes = [Route(r.name, r.bucket, r.name, r.weight) for r in cfg.routes]
    mode = "group" if (cfg.train.routing == "group" or method.group_routes) else "hard"
    sampler = RouteSampler(routes, seed=cfg.seed, mode=mode)
    data = {r.name: make_data(r.bucket, r.csv, cfg.seed * 1000 + 31 * i + 7 + 100003 * accelerator.process_index,
                              resolution) for i, r in enumerate(cfg.routes)}
    ctx = StepContext(student, teachers, method_config(cfg), accelerator.device)

    step, wall = 0, 0.0
    ckpt = latest_good(out) if resuming else None
    if ckpt is not None:
        state, tensors = load_checkpoint(accelerator, ckpt)
        step, wall = state["step"], state.get("wall_time", 0.0)
        for k, d in data.items():
            d.load_state_dict(state["data"][k])
        sampler.load_state_dict({**state["routes"],
                                 "generator_state": torch.tensor(state["routes"]["generator_state"],
                                                                 dtype=torch.uint8)})
        if ema is not None:
            ema.load(tensors)
    log = MetricsLog(out / "metrics.jsonl", step if ckpt is not None else None)
    accelerator.init_trackers("distill", config={"method": cfg.method, "setting": cfg.setting})
    bar = tqdm(total=cfg.train.steps, initial=step, desc=f"{cfg.method} {cfg.setting}".strip(),
               disable=not progress or not accelerator.is_main_process, unit="step")
    t_start = time.time() - wall
    step_times: list[float] = []
    skipped = done_here = 0
    debug_ranks = os.environ.get("DANCEOPD_DEBUG_RANKS") == "1"   # tests: per-rank route trace + weight checksum
    rank_trace: list[dict] = []
    while step < cfg.train.steps:
        t0 = time.perf_counter()
        picked = [sampler.sample() if accelerator.is_main_process else None]
        picked = broadcast_object_list(picked, from_process=0)[0]   # every rank trains the same route
        if debug_ranks:
            rank_trace.append({"step": step + 1, "route": "+".join(routes[i].name for i in picked)})
        model.train()
        bad, infos, losses = None, {}, []
        for _micro in range(cfg.train.grad_accum):
            with accelerator.accumulate(model):
                total = 0.0
                wsum = sum(routes[i].weight for i in picked)
                for i in picked:
                    r = routes[i]
                    batch = data[r.name].next(cfg.train.batch_size)
                    with accelerator.autocast():
                        loss, info = method.loss(ctx, r, batch)
                    total = total + loss * (r.weight / wsum)
                    infos = {**infos, **{f"{k}/{r.name}": v for k, v in info.items()}}
                    losses.append((r.name, loss.detach()))
                accelerator.backward(total)
                if accelerator.sync_gradients:
                    route_name = "+".join(routes[i].name for i in picked)
                    bad = check_finite(total.detach(), model, step + 1, route_name, cfg.method)
                    if bad is None:
                        accelerator.clip_grad_norm_(params, cfg.train.grad_clip)
                if bad is None:
                    opt.step()
                    sched.step()
                opt.zero_grad(set_to_none=True)
                if bad is not None:
                    break
        if bad is not None:
            skipped = handle_nonfinite(bad, cfg.train, skipped, out, bar, accelerator)
        step += 1
        done_here += 1
        if debug_ranks:
            rank_trace[-1]["loss"] = float(total.detach())
        if ema is not None:
            ema.update(named, step)
        step_times.append(time.perf_counter() - t0)
        bar.update(1)
        kill_point(f"step:{step}")
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            rec = {"step": step, "loss": float(total.detach()), "route": "+".join(routes[i].name for i in picked),
                   "lr": sched.get_last_lr()[0], **{f"loss/{n}": float(v) for n, v in losses}, **infos}
            log_step(accelerator, log, bar, rec, loss=f"{rec['loss']:.4f}", route=rec["route"])
        if cfg.train.sample_every and step % cfg.train.sample_every == 0 and accelerator.is_main_process:
            _sample_grid(student, cfg, out / "samples" / f"step-{step:08d}.png", accelerator, step, resolution)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            rs = sampler.state_dict()
            rs["generator_state"] = rs["generator_state"].tolist()
            st = {"step": step, "data": {k: d.state_dict() for k, d in data.items()}, "routes": rs,
                  "wall_time": time.time() - t_start}
            checkpoint(accelerator, out, step, st, ema.tensors() if ema is not None else {},
                       cfg.train.checkpoints_total_limit)
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    if debug_ranks:
        _dump_rank_debug(out, accelerator, model, rank_trace)
    if step >= cfg.train.steps and accelerator.is_main_process:
        if ema is not None:
            ema.swap(named)
        try:
            family.export(student, out, sampling, {**meta, "steps": cfg.train.steps,
                                                   "wall_time_s": round(time.time() - t_start, 1)},
                          lora=cfg.student.lora.enabled)
        finally:
            if ema is not None:
                ema.swap(named)
        sec = float(np.median(step_times)) if step_times else None
        write_json_atomic(out / "final.json", {"steps": cfg.train.steps, "sec_per_step": sec,
                                               "wall_time_s": round(time.time() - t_start, 1)})
    accelerator.wait_for_everyone()
    accelerator.end_training()   # last: it also destroys the process group (the barrier above needs it)
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
