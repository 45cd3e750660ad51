"""Pieces shared by every trainer: run-folder safety, the Accelerator start, EMA, the NaN/inf guard, the metrics
log, fault injection for the kill-and-resume tests. (LoRA: ``danceopd.util.lora``.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..util.atomic import write_json_atomic


class NonFiniteError(RuntimeError):
    pass


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, config: dict) -> bool:
    """Decide what to do with ``out`` before any expensive work. Returns True when resuming.

    A run never writes into an existing run folder unless told to resume (same config) or overwrite."""
    out = Path(out)
    cfg_file = out / "run_config.json"
    if out.exists() and any(out.iterdir()):
        if resume:
            if not cfg_file.is_file():
                raise UserError(f"{out}: cannot resume, no run_config.json (not a danceopd run folder)")
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
            changed = sorted(_diff(old, config))
            # extending a run (more steps, a learning-rate decay tail) or a different thread count is allowed
            ignore = {"train.steps", "train.threads", "optim.decay_start", "optim.final_lr_frac"}
            blocking = [c for c in changed if c not in ignore]
            if blocking:
                raise UserError(f"{out}: cannot resume, config differs from the run's at {', '.join(blocking[:5])}; "
                                "use a new --out or --overwrite")
            if changed:  # record the config the run now continues under
                write_json_atomic(cfg_file, config)
            return True
        if not overwrite:
            raise UserError(f"{out}: run folder exists and is not empty; pass --resume to continue it or "
                            "--overwrite to replace it")
        shutil.rmtree(out)
    elif resume:
        pass  # nothing to resume: start fresh
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg_file, config)
    return False


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


class EMA:
    """Exponential moving average of the trainable parameters (float32), with the usual warm-up
    ``decay_t = min(decay, (1 + t) / (10 + t))``."""

    def __init__(self, named_params, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self, named_params, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        shadow = [self.shadow[n] for n, _ in named_params]
        live = [p.detach().float() for _, p in named_params]
        # one fused launch per op instead of two per tensor (same arithmetic as shadow.mul_(d).add_(p, alpha=1-d))
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, live, alpha=1 - d)

    @torch.no_grad()
    def swap(self, named_params):
        """Exchange live weights and EMA weights (call twice to restore)."""
        for n, p in named_params:
            tmp = p.detach().clone()
            p.copy_(self.shadow[n].to(p.dtype))
            self.shadow[n] = tmp.float()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{n}": v for n, v in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]):
        for n in self.shadow:
            self.shadow[n] = tensors[f"ema.{n}"].to(self.shadow[n].device, torch.float32).clone()


def check_finite(loss: torch.Tensor, model, step: int, route: str, method: str) -> str | None:
    """None if the loss and all gradients are finite, else a message naming step, route and method."""
    if not torch.isfinite(loss).all():
        return f"non-finite loss ({loss.item()}) at step {step}, route {route!r}, method {method!r}"
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    # One device sync for the common case (all finite); a per-tensor check would sync once per parameter.
    # A norm overflowing on huge-but-finite gradients only sends us to the exact per-tensor check below.
    if torch.isfinite(torch.stack([x.float() for x in torch._foreach_norm([g for _, g in named])])).all():
        return None
    for n, g in named:
        if not torch.isfinite(g).all():
            return f"non-finite gradient in {n} at step {step}, route {route!r}, method {method!r}"
    return None


class MetricsLog:
    """``metrics.jsonl``: one JSON line per logged step. On resume, lines after the checkpoint step are dropped so
    an interrupted-and-resumed run logs exactly what an uninterrupted one does."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, rec: dict):
        rec = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()


def t_bins(per_sample: torch.Tensor, t: torch.Tensor, n_bins: int = 5) -> dict[str, float]:
    """Mean loss per t-bin (minRF-style diagnostic)."""
    out = {}
    idx = (t.clamp(0, 1 - 1e-6) * n_bins).long()
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out[f"loss_t{b / n_bins:.1f}"] = per_sample[m].mean().item()
    return out


def kill_point(name: str) -> None:
    """Fault injection for the kill-and-resume tests: ``DANCEOPD_KILL_AT=<name>`` SIGKILLs this process when
    execution reaches that point (e.g. ``step:5`` after optimizer step 5, ``ckpt:4`` mid-way through writing
    checkpoint 4). Unset in normal use."""
    import os
    import signal

    if os.environ.get("DANCEOPD_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def start_run(out: Path, resume: bool, overwrite: bool, config: dict, grad_accum: int, mixed_precision: str,
              threads: int):
    """Shared start of every trainer: the main process alone prepares the run folder (other ranks get its verdict:
    with several processes each doing it, one created the folder and the next found it "not empty"), then the
    Accelerator. ``split_batches``: no dataloader is prepared, it makes the prepared LR scheduler step once per
    optimizer step instead of once per process. Returns (accelerator, resuming)."""
    from accelerate import Accelerator, DataLoaderConfiguration, PartialState
    from accelerate.utils import broadcast_object_list

    dist = PartialState(cpu=not torch.cuda.is_available())
    verdict: list = [None, None]   # [resuming, error message]
    if dist.is_main_process:
        try:
            verdict[0] = prepare_run_dir(out, resume, overwrite, config)
        except UserError as e:
            verdict[1] = str(e)
    resuming, error = broadcast_object_list(verdict, from_process=0)
    if error is not None:
        raise UserError(error)
    if threads:
        torch.set_num_threads(threads)
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                              log_with="tensorboard", project_dir=str(out), cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    return accelerator, resuming


def log_step(accelerator, log: MetricsLog, bar, rec: dict, **postfix) -> None:
    """One logged step: progress-bar postfix, metrics.jsonl (main process) and the trackers (numbers only)."""
    bar.set_postfix(**postfix)
    if accelerator.is_main_process:
        log.write(rec)
    accelerator.log({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=rec["step"])
