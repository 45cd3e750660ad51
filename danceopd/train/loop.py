"""The one training loop, shared by SFT (``train/sft.py``) and every distillation method (``train/distill.py``).

Per optimizer step: ``task.begin_step`` (distillation: draw and broadcast the step's routes), ``grad_accum``
micro-batches of ``task.micro_loss()`` under ``accelerator.accumulate``, the finite check on the loss and every
gradient (``nan_policy``: stop, or skip the step), gradient clipping, the AdamW step and the LR schedule, the
optional EMA, then logging, sample grids and atomic checkpoints on their schedules. Resume restores the step
counter, the task's streams (``task.load_state_dict``), the RNG / optimizer / scheduler (``train.checkpoint``) and
the EMA, so an interrupted run continues bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from .checkpoint import latest_good, load_checkpoint, prune, save_checkpoint
from .common import EMA, MetricsLog, NonFiniteError, check_finite, kill_point, log_step


class Schedule(Protocol):
    """What the loop reads of a ``train:`` section (SFT's ``TrainSection``, distillation's ``DistillTrain``)."""

    steps: int
    grad_accum: int
    log_every: int
    sample_every: int
    checkpoint_every: int
    checkpoints_total_limit: int
    nan_policy: str              # stop | skip (a step whose loss or gradients are not finite)
    max_skipped_steps: int


class Task(Protocol):
    """One trainer's side of the loop. ``name`` names the method in non-finite messages, ``tracker`` the
    Accelerate tracker run, ``desc`` the progress bar."""

    name: str
    tracker: str
    desc: str

    def tracker_config(self) -> dict: ...

    def begin_step(self, step: int) -> None:
        """Before optimizer step ``step + 1``'s micro-batches (all ranks)."""

    def micro_loss(self) -> torch.Tensor:
        """The loss of one micro-batch (backpropagated by the loop)."""

    def label(self) -> str:
        """What this step trained on (a bucket, ``t2i+edit``), for messages and logs."""

    def record(self) -> tuple[dict, dict]:
        """(extra metrics of the step just done, extra progress-bar fields)."""

    def end_step(self, step: int, loss: torch.Tensor) -> None: ...

    def sample(self, path: Path, step: int) -> None:
        """Write a sample grid (main process; called every ``sample_every`` steps)."""

    def state_dict(self) -> dict:
        """JSON-able stream state for a checkpoint (``data``, ``routes`` ...)."""

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Trainables:
    """The prepared student module, its optimizer, LR scheduler, trainable parameters and optional EMA."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    named: list[tuple[str, torch.nn.Parameter]]
    ema: EMA | None


def prepare_trainables(accelerator, net: torch.nn.Module, lr: float, lr_factor: Callable[[int], float],
                       weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                       ema_decay: float | None = None) -> Trainables:
    """AdamW over the parameters that require grad, ``LambdaLR(lr_factor)``, both through ``accelerator.prepare``;
    an EMA of the trainable parameters unless ``ema_decay`` is None."""
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model, opt, sched = accelerator.prepare(net, opt, sched)
    named = [(n, p) for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad]
    ema = EMA(named, ema_decay) if ema_decay is not None else None
    return Trainables(model, opt, sched, params, named, ema)


@dataclass
class LoopResult:
    step: int                       # optimizer steps done (== settings.steps when the run finished)
    t_start: float                  # time.time() the run started, resumed runs counted from their first start
    step_times: list[float] = field(default_factory=list)   # seconds per step of this process's steps

    def wall(self) -> float:
        return time.time() - self.t_start


def handle_nonfinite(bad: str, s: Schedule, skipped: int, out: Path, bar, accelerator) -> int:
    """Apply ``nan_policy`` to a step whose loss or gradients were not finite (message ``bad``): stop with the
    last good checkpoint named, or count one more skipped step. Returns the new skipped count."""
    if s.nan_policy == "stop" or skipped >= s.max_skipped_steps:
        bar.close()
        raise NonFiniteError(f"training stopped: {bad}; last good checkpoint: {latest_good(out)}")
    accelerator.print(f"warning: skipped step: {bad} ({skipped + 1}/{s.max_skipped_steps})")
    return skipped + 1


def checkpoint(accelerator, out: Path, step: int, state: dict, tensors: dict, limit: int) -> None:
    """Atomic checkpoint, then pruning down to ``limit`` (never the newest good one)."""
    save_checkpoint(accelerator, out, step, state, tensors)
    if accelerator.is_main_process:
        prune(out, limit)


def run_loop(accelerator, tr: Trainables, task: Task, s: Schedule, grad_clip: float, out: Path, resuming: bool,
             progress: bool = True, stop_after: int | None = None) -> LoopResult:
    """Train until ``s.steps`` (or ``stop_after`` steps of this call), gradients clipped to norm ``grad_clip``;
    returns where it stopped."""
    from tqdm import tqdm

    out = Path(out)
    step, wall = 0, 0.0
    ckpt = latest_good(out) if resuming else None
    if ckpt is not None:
        state, tensors = load_checkpoint(accelerator, ckpt)
        step, wall = state["step"], state.get("wall_time", 0.0)
        task.load_state_dict(state)
        if tr.ema is not None:
            tr.ema.load(tensors)
    log = MetricsLog(out / "metrics.jsonl", step if ckpt is not None else None)
    accelerator.init_trackers(task.tracker, config=task.tracker_config())
    bar = tqdm(total=s.steps, initial=step, desc=task.desc, unit="step",
               disable=not progress or not accelerator.is_main_process)
    res = LoopResult(step, time.time() - wall)
    skipped = done_here = 0
    model, opt, sched = tr.model, tr.opt, tr.sched
    while step < s.steps:
        t0 = time.perf_counter()
        task.begin_step(step)
        model.train()
        bad = None
        for _micro in range(s.grad_accum):
            with accelerator.accumulate(model):
                loss = task.micro_loss()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    bad = check_finite(loss.detach(), model, step + 1, task.label(), task.name)
                    if bad is None:
                        accelerator.clip_grad_norm_(tr.params, grad_clip)
                if bad is None:
                    opt.step()
                    sched.step()
                opt.zero_grad(set_to_none=True)
                if bad is not None:
                    break
        if bad is not None:
            skipped = handle_nonfinite(bad, s, skipped, out, bar, accelerator)
        step += 1
        done_here += 1
        task.end_step(step, loss)
        if tr.ema is not None:
            tr.ema.update(tr.named, step)
        res.step_times.append(time.perf_counter() - t0)
        bar.update(1)
        kill_point(f"step:{step}")
        if step % s.log_every == 0 or step == s.steps:
            extra, postfix = task.record()
            rec = {"step": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0], **extra}
            log_step(accelerator, log, bar, rec, loss=f"{rec['loss']:.4f}", **postfix)
        if s.sample_every and step % s.sample_every == 0 and accelerator.is_main_process:
            task.sample(out / "samples" / f"step-{step:08d}.png", step)
        if step % s.checkpoint_every == 0 or step == s.steps:
            st = {"step": step, **task.state_dict(), "wall_time": time.time() - res.t_start}
            checkpoint(accelerator, out, step, st, tr.ema.tensors() if tr.ema is not None else {},
                       s.checkpoints_total_limit)
        if stop_after is not None and done_here >= stop_after:
            break
    bar.close()
    res.step = step
    return res


def finish(accelerator) -> None:
    """Every rank waits for the main process's export, then the run ends (last: it tears down the process
    group the barrier needs)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
