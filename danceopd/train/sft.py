"""Supervised flow-matching training (the T2I base and the edit teachers) on Accelerate.

``danceopd train --config configs/world/<name>.yaml [--set a.b=c] [--out DIR] [--resume|--overwrite]``

Per optimizer step: ``grad_accum`` micro-batches from the bucket's stream; t ~ logit-normal, x_t = (1-t) x_0 + t
noise, regress v = noise - x_0 (MSE); text dropped to the empty prompt with ``text_dropout`` and the source image
with ``source_dropout`` (for classifier-free guidance). EMA weights are what gets exported.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..backends.world import SamplingConfig, WorldBackend, save_world_model
from ..backends.world_model import WorldNetConfig, WorldUNet, grow, widen_for_editing
from ..backends.world_specs import load_backend, resolve_model_path
from ..errors import UserError
from ..methods.sft import sft_squared_error
from ..util.atomic import save_safetensors_atomic, write_json_atomic
from ..util.lora import LoraConfig, add_lora, lora_state, merged_state_dict
from ..world.sampler import BUCKETS, category_probs
from ..world.text import WorldTokenizer
from .common import EMA, start_run, t_bins
from .data import make_data
from .loop import finish, prepare_trainables, run_loop


@dataclass
class ModelSection:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    attn_levels: list[int] = field(default_factory=lambda: [1, 2])
    self_attn_levels: list[int] | None = None  # None: pixel self-attention at the lowest level only
    text_dim: int = 64
    text_layers: int = 2
    text_conv_layers: int = 0  # 1-D conv blocks (kernel 5) over the tokens before the transformer layers
    text_pos_std: float = 0.02  # init std of the learned position embeddings (token embeddings start at N(0, 1))
    emb_dim: int = 128

    def validate(self):
        if not self.channels or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError("model.channels must be multiples of 8")
        if self.text_conv_layers < 0 or self.text_layers < 0:
            raise ValueError("model.text_layers and model.text_conv_layers must be >= 0")
        if not (self.text_pos_std >= 0 and math.isfinite(self.text_pos_std)):
            raise ValueError(f"model.text_pos_std must be a finite number >= 0, got {self.text_pos_std}")
        n = len(self.channels)
        for k in ("attn_levels", "self_attn_levels"):
            if any(not 0 <= i < n for i in getattr(self, k) or ()):
                raise ValueError(f"model.{k} must be levels in 0..{n - 1}")


@dataclass
class GrowSection:
    """Add attention to the ``init`` model (zero-initialized outputs: the grown model equals its parent at step 0).
    None keeps the parent's setting."""

    attn_levels: list[int] | None = None
    self_attn_levels: list[int] | None = None
    text_layers: int | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.attn_levels, self.self_attn_levels, self.text_layers))


@dataclass
class DataSection:
    bucket: str = "t2i"
    csv: str | None = None
    resolution: int = 32
    text_dropout: float = 0.1
    source_dropout: float = 0.05
    # relative sampling weight per category of the bucket (unnamed ones weigh 1); {} = uniform
    category_weights: dict[str, float] = field(default_factory=dict)

    def validate(self):
        if self.bucket not in BUCKETS:
            raise ValueError(f"data.bucket must be one of {', '.join(BUCKETS)}, got {self.bucket!r}")
        if self.category_weights:
            if self.csv:
                raise ValueError("data.category_weights applies to the world stream; remove it or data.csv")
            try:
                category_probs(self.bucket, self.category_weights)
            except ValueError as e:
                raise ValueError(f"data.category_weights: {e}") from None
        if self.resolution not in (32, 64):
            raise ValueError(f"data.resolution must be 32 or 64, got {self.resolution}")
        for k in ("text_dropout", "source_dropout"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"data.{k} must be in [0, 1)")


@dataclass
class OptimSection:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 300
    grad_clip: float = 1.0
    # Linear decay of the learning rate from step `decay_start` to `final_lr_frac * lr` at the last step;
    # None keeps it constant after warmup. Steps before decay_start are unaffected, so a run can be extended
    # with a decay tail and still be reproduced bit-for-bit by one command.
    decay_start: int | None = None
    final_lr_frac: float = 0.1

    def validate(self):
        if not 0 < self.lr < 1:
            raise ValueError(f"optim.lr must be in (0, 1), got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.grad_clip > 0")
        if self.decay_start is not None and self.decay_start < 0:
            raise ValueError(f"optim.decay_start must be >= 0 or null, got {self.decay_start}")
        if not 0 <= self.final_lr_frac <= 1:
            raise ValueError(f"optim.final_lr_frac must be in [0, 1], got {self.final_lr_frac}")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of `lr` at optimizer step `step` (0-based): linear warmup, constant, optional linear decay."""
        f = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.decay_start is not None and step >= self.decay_start and total_steps > self.decay_start:
            frac = min(1.0, (step - self.decay_start) / (total_steps - self.decay_start))
            f *= 1.0 - (1.0 - self.final_lr_frac) * frac
        return f


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 64
    grad_accum: int = 1
    mixed_precision: str = "no"
    t_dist: str = "logit_normal"
    ema_decay: float = 0.999
    freeze_text: bool = False
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    nan_policy: str = "stop"
    max_skipped_steps: int = 10
    threads: int = 0

    def validate(self):
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.steps, train.batch_size and train.grad_accum must be >= 1")
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"train.mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.t_dist not in ("logit_normal", "uniform"):
            raise ValueError("train.t_dist must be 'logit_normal' or 'uniform'")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("train.ema_decay must be in [0, 1)")
        if self.nan_policy not in ("stop", "skip"):
            raise ValueError("train.nan_policy must be 'stop' or 'skip'")
        if min(self.log_every, self.checkpoint_every) < 1 or self.sample_every < 0:
            raise ValueError("train.log_every and train.checkpoint_every must be >= 1, train.sample_every >= 0")


@dataclass
class SFTConfig:
    name: str = "t2i"
    init: str | None = None          # start weights: None = fresh, world:<name>, a .safetensors or a run folder
    widen_for_editing: bool = False  # add zero-initialized source-image channels to the init model
    grow: GrowSection = field(default_factory=GrowSection)  # add attention to the init model (zero-initialized)
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainSection = field(default_factory=TrainSection)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self):
        if self.init is None and self.widen_for_editing:
            raise ValueError("widen_for_editing needs an init model")
        if self.init is None and self.grow.active:
            raise ValueError("grow needs an init model (for a fresh model set the model section instead)")


SAMPLE_PROMPTS = [
    "a photo of a red circle", "a blue square and a yellow star", "three triangles",
    "a green star to the left of a purple circle", "a photo of an orange triangle on a white background",
    "a circle above a square", "two squares", "a yellow circle and a red triangle",
]


def build_model(cfg: SFTConfig) -> tuple[WorldUNet, WorldTokenizer]:
    if cfg.init:
        be = load_backend(cfg.init)
        net, tok = be.net, be.tokenizer
        for p in net.parameters():
            p.requires_grad_(True)
        if cfg.grow.active:
            g = cfg.grow
            try:
                net = grow(net, g.attn_levels, g.self_attn_levels, g.text_layers)
            except ValueError as e:
                raise UserError(f"init {cfg.init!r}: {e}") from None
        if cfg.widen_for_editing:
            net = widen_for_editing(net)
        elif cfg.data.bucket != "t2i" and not net.cfg.edit:
            raise UserError(f"init {cfg.init!r} has no source-image input; set widen_for_editing: true to edit")
        return net, tok
    tok = WorldTokenizer()
    m = cfg.model
    net_cfg = WorldNetConfig(vocab_size=tok.vocab_size, max_len=tok.max_len, channels=tuple(m.channels),
                             attn_levels=tuple(m.attn_levels), text_dim=m.text_dim, text_layers=m.text_layers,
                             self_attn_levels=None if m.self_attn_levels is None else tuple(m.self_attn_levels),
                             text_conv_layers=m.text_conv_layers, text_pos_std=m.text_pos_std,
                             emb_dim=m.emb_dim, edit=cfg.data.bucket != "t2i")
    return WorldUNet(net_cfg), tok


class SFTTask:
    """The SFT side of the loop (``train.loop.Task``): micro-batches from one bucket's stream, the flow-matching
    loss (``methods.sft``), text / source dropout for CFG."""

    tracker = "sft"

    def __init__(self, cfg: SFTConfig, backend: WorldBackend, data, ema: EMA, named, accelerator):
        self.cfg, self.backend, self.data, self.ema, self.named = cfg, backend, data, ema, named
        self.accelerator = accelerator
        self.name, self.desc = "sft", f"train {cfg.name}"
        self.per = self.t = None

    def tracker_config(self) -> dict:
        return {"name": self.cfg.name, "bucket": self.cfg.data.bucket}

    def begin_step(self, step: int) -> None:
        pass

    def micro_loss(self) -> torch.Tensor:
        d, dev = self.cfg.data, self.accelerator.device
        b = self.data.next(self.cfg.train.batch_size)
        src = b.source.to(dev) if b.source is not None else None
        sq, self.t = sft_squared_error(
            self.backend, b.x_0.to(dev), b.prompts, src if net_has_source(self.backend) else None,
            text_dropout=d.text_dropout, t_dist=self.cfg.train.t_dist, source_dropout=d.source_dropout,
            source_valid=b.has_source if src is not None else None, autocast=self.accelerator.autocast())
        self.per = sq.flatten(1).mean(1)
        return self.per.mean()

    def label(self) -> str:
        return self.cfg.data.bucket

    def record(self) -> tuple[dict, dict]:
        return t_bins(self.per.detach(), self.t), {}

    def end_step(self, step: int, loss: torch.Tensor) -> None:
        pass

    def sample(self, path: Path, step: int) -> None:
        _sample_grid(self.backend, self.ema, self.named, path, self.accelerator, step)

    def state_dict(self) -> dict:
        return {"data": self.data.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.data.load_state_dict(state["data"])


def train_sft(cfg: SFTConfig, out: Path, resume: bool = False, overwrite: bool = False, progress: bool = True,
              stop_after: int | None = None) -> Path:
    """Train; returns the run folder. ``stop_after``: leave after that many optimizer steps (tests)."""
    from accelerate.utils import set_seed

    out = Path(out)
    cfg_dict = dataclasses.asdict(cfg)
    # validate everything cheap before touching the output folder or loading models
    if cfg.init:
        try:
            resolve_model_path(cfg.init)
        except FileNotFoundError:
            raise UserError(f"init: model {cfg.init!r} not found") from None
    data_seed = cfg.seed * 1000 + 17
    if cfg.data.csv:
        make_data(cfg.data.bucket, cfg.data.csv, 0, cfg.data.resolution)  # validates the whole CSV
    accelerator, resuming = start_run(out, resume, overwrite, cfg_dict, cfg.train.grad_accum,
                                      cfg.train.mixed_precision, cfg.train.threads)
    set_seed(cfg.seed)  # identical initial weights on every rank
    net, tok = build_model(cfg)
    if accelerator.num_processes > 1:
        set_seed(cfg.seed, device_specific=True)  # then rank r draws its own noise and t
    if cfg.train.freeze_text:
        for p in net.text.parameters():
            p.requires_grad_(False)
    if cfg.lora.enabled:
        net = add_lora(net, cfg.lora)
    o = cfg.optim
    tr = prepare_trainables(accelerator, net, o.lr, lambda s: o.lr_factor(s, cfg.train.steps),
                            weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), ema_decay=cfg.train.ema_decay)
    data = make_data(cfg.data.bucket, cfg.data.csv, data_seed + accelerator.process_index, cfg.data.resolution,
                     cfg.data.category_weights)
    backend = WorldBackend(tr.model, tok, cfg.data.resolution, cfg.sampling)
    (out / "samples").mkdir(exist_ok=True)
    t = cfg.train
    res = run_loop(accelerator, tr, SFTTask(cfg, backend, data, tr.ema, tr.named, accelerator), t, o.grad_clip,
                   out, resuming, progress, stop_after)
    if res.step >= t.steps and accelerator.is_main_process:
        export_model(accelerator.unwrap_model(tr.model), tok, tr.ema, tr.named, out, cfg, res.wall())
    finish(accelerator)
    return out


def net_has_source(backend: WorldBackend) -> bool:
    return backend.net.cfg.edit if not hasattr(backend.net, "base_model") else True


@torch.no_grad()
def _sample_grid(backend, ema, named, path: Path, accelerator, step: int):
    from PIL import Image

    if backend.is_edit:
        return  # edit models get contact sheets from `danceopd eval`
    ema.swap(named)
    try:
        imgs = backend.sample(SAMPLE_PROMPTS, seed=0)
    finally:
        ema.swap(named)
    grid = np.concatenate(list(imgs), axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("samples", grid, step, dataformats="HWC")


def export_model(net, tok, ema: EMA, named, out: Path, cfg: SFTConfig, wall: float) -> Path:
    """Write ``model.safetensors`` (EMA weights; LoRA merged) and ``final.json``."""
    ema.swap(named)
    try:
        state = merged_state_dict(net) if cfg.lora.enabled else net.state_dict()
        if cfg.lora.enabled:
            save_safetensors_atomic({k: v.contiguous() for k, v in lora_state(net).items()}, out / "lora.safetensors")
        plain = WorldUNet(_net_cfg(net))
        plain.load_state_dict(state)
    finally:
        ema.swap(named)
    meta = {"name": cfg.name, "resolution": cfg.data.resolution, "steps": cfg.train.steps,
            "wall_time_s": round(wall, 1), "config": json.dumps(dataclasses.asdict(cfg))}
    save_world_model(plain, tok, out / "model.safetensors", cfg.sampling, meta=meta)
    write_json_atomic(out / "final.json", {"steps": cfg.train.steps, "wall_time_s": round(wall, 1)})
    return out / "model.safetensors"


def _net_cfg(net) -> WorldNetConfig:
    m = net
    while not isinstance(m, WorldUNet):
        m = getattr(m, "base_model", None) or m.module
    return m.cfg
