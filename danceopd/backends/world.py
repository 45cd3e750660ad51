"""The ShapesWorld backend: WorldUNet + word tokenizer behind the backend protocol, file I/O (safetensors with
config and tokenizer in the header), and guided sampling / editing for the CLI and the evaluation suite."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..core.flow import timesteps as make_timesteps
from ..errors import UserError
from ..util.atomic import save_safetensors_atomic
from ..world.text import WorldTokenizer
from .base import guided_field
from .rowsplit import default_workers, row_parallel
from .world_model import WorldNetConfig, WorldUNet

FORMAT = "danceopd.world_unet/1"


@dataclass
class SamplingConfig:
    steps: int = 16
    shift: float = 1.0
    text_scale: float = 3.0
    image_scale: float = 1.0

    def validate(self):
        if self.steps < 1:
            raise ValueError("sampling.steps must be >= 1")
        if self.shift <= 0:
            raise ValueError("sampling.shift must be > 0")


@dataclass
class Cond:
    """Encoded conditions: text states (ctx [B,L,D], pad [B,L], pooled [B,D]); source [B,3,H,W] or None."""

    text: tuple
    source: torch.Tensor | None
    source_mask: torch.Tensor | None

    def cat(self, other: Cond) -> Cond:
        text = tuple(torch.cat([a, b]) for a, b in zip(self.text, other.text))
        if self.source is None and other.source is None:
            return Cond(text, None, None)
        ref = self.source if self.source is not None else other.source
        n1, n2 = len(self.text[0]), len(other.text[0])

        def fill(c: Cond, n):
            if c.source is not None:
                return c.source, c.source_mask
            return ref.new_zeros((n, *ref.shape[1:])), ref.new_zeros(n)

        (s1, m1), (s2, m2) = fill(self, n1), fill(other, n2)
        return Cond(text, torch.cat([s1, s2]), torch.cat([m1, m2]))

    def select(self, rows: torch.Tensor) -> Cond:
        """The conditions of ``rows`` (``LongTensor[B']`` of batch indices), in that order."""
        def pick(a):
            return None if a is None else a[rows.to(a.device)]

        return Cond(tuple(pick(a) for a in self.text), pick(self.source), pick(self.source_mask))

    def rows(self, s: slice) -> Cond:
        """The conditions of the contiguous rows ``s`` (views, no copy)."""
        return Cond(tuple(a[s] for a in self.text), *(None if a is None else a[s] for a in
                                                       (self.source, self.source_mask)))


def images_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class WorldBackend:
    """Backend protocol over a WorldUNet. ``model`` may be wrapped (Accelerate/DDP); ``net`` is the bare module."""

    name = "world"

    def __init__(self, model: WorldUNet, tokenizer: WorldTokenizer, resolution: int = 32,
                 sampling: SamplingConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.sampling = sampling or SamplingConfig()
        self.workers: int | None = None   # row-parallel CPU workers (None: torch's thread count; backends.rowsplit)

    @property
    def net(self) -> WorldUNet:
        m = self.model
        while hasattr(m, "module"):
            m = m.module
        return m

    @property
    def device(self):
        return next(self.net.parameters()).device

    @property
    def is_edit(self) -> bool:
        return self.net.cfg.edit

    def encode(self, prompts, sources=None, drop_text=None, drop_source=None) -> Cond:
        prompts = list(prompts)
        if drop_text is not None:
            prompts = ["" if d else p for p, d in zip(prompts, drop_text.tolist())]
        tokens = self.tokenizer.encode(prompts).to(self.device)
        text = self.net.encode_text(tokens)
        mask = None
        if sources is not None:
            mask = torch.ones(len(prompts), device=self.device)
            if drop_source is not None:
                mask = mask * (~drop_source.to(self.device)).float()
        return Cond(text, sources, mask)

    def velocity(self, x_t, t, cond: Cond) -> torch.Tensor:
        def rows(s: slice) -> torch.Tensor:
            c = cond.rows(s)
            return self.model(x_t[s], t if t.dim() == 0 else t[s], text=c.text, source=c.source,
                              source_mask=c.source_mask)

        workers = self.workers if self.workers is not None else default_workers(x_t.device)
        if workers == 1 or isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return rows(slice(None))   # DDP counts forwards: one call per step there
        inputs = [x_t, t, *cond.text, cond.source, cond.source_mask]
        # parallel backward too when only the model's own parameters need gradients (the usual student step)
        params = [] if any(a is not None and a.requires_grad for a in inputs) else \
            [p for p in self.model.parameters() if p.requires_grad]
        return row_parallel(rows, len(x_t), workers, params if torch.is_grad_enabled() else ())

    def timesteps(self, n_steps: int | None = None, shift: float | None = None) -> torch.Tensor:
        return make_timesteps(n_steps or self.sampling.steps, self.sampling.shift if shift is None else shift)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 3, self.resolution, self.resolution)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> states (identity: this model works in pixel space)."""
        return x.to(self.device)

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    # ---- guided fields and sampling -------------------------------------------------------------------------
    def guided_field(self, prompts, sources=None, text_scale=None, image_scale=None):
        """CFG field over this backend (see ``danceopd.backends.base.guided_field``); scales default to the
        sampler's."""
        s_txt = self.sampling.text_scale if text_scale is None else text_scale
        s_img = self.sampling.image_scale if image_scale is None else image_scale
        return guided_field(self, prompts, sources, s_txt, s_img)

    @torch.no_grad()
    def sample(self, prompts, sources: np.ndarray | None = None, seed: int = 0, steps=None, shift=None,
               text_scale=None, image_scale=None, batch_size: int = 64) -> np.ndarray:
        """Generate uint8 [B, H, W, 3]; edits when ``sources`` (uint8 [B, H, W, 3]) is given."""
        from ..core.flow import ode_sample

        if sources is not None and not self.is_edit:
            raise UserError("this model has no source-image input (a T2I model); use an edit model")
        self.model.eval()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.latent_shape(len(prompts)), generator=g)
        out = []
        ts = self.timesteps(steps, shift)
        for i in range(0, len(prompts), batch_size):
            src = None if sources is None else images_to_tensor(sources[i:i + batch_size]).to(self.device)
            field = self.guided_field(prompts[i:i + batch_size], src, text_scale, image_scale)
            out.append(tensor_to_images(ode_sample(field, noise[i:i + batch_size].to(self.device), ts)))
        return np.concatenate(out)


# ---- file I/O ---------------------------------------------------------------------------------------------------
def save_world_model(net: WorldUNet, tokenizer: WorldTokenizer, path, sampling: SamplingConfig | None = None,
                     dtype=torch.float32, meta: dict | None = None, state: dict | None = None) -> Path:
    """Write weights + config + tokenizer (+ sampler defaults) to one safetensors file, atomically."""
    path = Path(path)
    sd = state if state is not None else net.state_dict()
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}
    header = {
        "format": FORMAT,
        "config": json.dumps(net.cfg.to_dict()),
        "tokenizer": json.dumps({"words": tokenizer.words[3:], "max_len": tokenizer.max_len}),
        "sampling": json.dumps((sampling or SamplingConfig()).__dict__),
        "meta": json.dumps(meta or {}),
    }
    return save_safetensors_atomic(tensors, path, metadata=header)


def load_world_model(path, device="cpu") -> tuple[WorldUNet, WorldTokenizer, SamplingConfig, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise UserError(f"{path}: not a danceopd world model (format {header.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: unreadable model file ({type(e).__name__}: {str(e)[:80]})") from None
    cfg = WorldNetConfig.from_dict(json.loads(header["config"]))
    tok_d = json.loads(header["tokenizer"])
    tok = WorldTokenizer(tok_d["words"], tok_d["max_len"])
    net = WorldUNet(cfg)
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    sampling = SamplingConfig(**json.loads(header.get("sampling", "{}")))
    return net.to(device).eval(), tok, sampling, json.loads(header.get("meta", "{}"))
