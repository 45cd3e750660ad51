"""``DiffusersBackend``: the backend protocol (``backends.base.Backend``) over one diffusers transformer, its
conditions (``DCond``), and the helpers the family files use (scheduler shift, grouped calls, stacked caches).

States are VAE latents ``[B, C, H/8, W/8]`` (scaled and shifted the way the pipeline does it), ``x_t = (1 - t) x_0
+ t noise``, ``v = noise - x_0``, ``t = 1`` is noise; each family's ``forward`` maps (x_t, t) to its transformer's
own time and sign conventions (checked against the pipelines' own scheduler steps in ``tests/backends``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UserError
from ..base import guided_field
from ..world import SamplingConfig, images_to_tensor, tensor_to_images
from .cache import Shared
from .options import DiffusersOptions, unwrap
from .spec import ModelSpec


def _select_any(a, rows: torch.Tensor):
    if isinstance(a, torch.Tensor):
        return a[rows.to(a.device)]
    if isinstance(a, list):
        return [a[i] for i in rows.tolist()]
    if isinstance(a, dict):
        return {k: _select_any(v, rows) for k, v in a.items()}
    raise TypeError(type(a))


def _cat_any(a, b):
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, list):
        return a + b
    if isinstance(a, dict):
        return {k: _cat_any(a[k], b[k]) for k in a}
    raise TypeError(type(a))


@dataclass
class DCond:
    """Encoded conditions: ``text`` (family-specific: tensors batched on dim 0, or per-sample lists),
    ``source`` latents [B, C, h, w] or None, ``source_mask`` [B] (1 = use the source, 0 = dropped)."""

    text: dict
    source: torch.Tensor | None
    source_mask: torch.Tensor | None

    def __len__(self):
        v = next(iter(self.text.values()))
        return len(v)

    def cat(self, other: DCond) -> DCond:
        text = {k: _cat_any(self.text[k], other.text[k]) for k in self.text}
        if self.source is None and other.source is None:
            return DCond(text, None, None)
        ref = self.source if self.source is not None else other.source

        def fill(c: DCond):
            if c.source is not None:
                return c.source, c.source_mask
            return ref.new_zeros((len(c), *ref.shape[1:])), ref.new_zeros(len(c))

        (s1, m1), (s2, m2) = fill(self), fill(other)
        return DCond(text, torch.cat([s1, s2]), torch.cat([m1, m2]))

    def select(self, rows: torch.Tensor) -> DCond:
        """The conditions of ``rows`` (``LongTensor[B']`` of batch indices), in that order."""
        text = {k: _select_any(v, rows) for k, v in self.text.items()}
        if self.source is None:
            return DCond(text, None, None)
        return DCond(text, _select_any(self.source, rows), _select_any(self.source_mask, rows))


# ---- the backend ---------------------------------------------------------------------------------------------------
class DiffusersBackend:
    """Backend protocol over one diffusers transformer. Subclasses implement ``encode_text`` (-> dict of batched
    text conditions), ``forward`` (the transformer call in our conventions) and may override ``is_edit``."""

    name = ""

    def __init__(self, family, shared: Shared, transformer, opts: DiffusersOptions, spec: ModelSpec | None,
                 offload: bool = False):
        self.family, self.shared, self.model, self.opts, self.spec = family, shared, transformer, opts, spec
        self.offload = offload
        self.resolution = opts.resolution
        self.sampling = SamplingConfig(steps=28, shift=1.0, text_scale=1.0, image_scale=1.0)
        info = (spec.info if spec is not None else {}) or {}
        if info.get("sampling"):
            self.sampling = SamplingConfig(**info["sampling"])

    # -- protocol ---------------------------------------------------------------------------------------------------
    @property
    def net(self):
        return unwrap(self.model)

    @property
    def device(self):
        return self.shared.device

    @property
    def compute_dtype(self) -> torch.dtype:
        for p in self.net.parameters():
            if not p.requires_grad:
                return p.dtype
        return next(self.net.parameters()).dtype

    @property
    def is_edit(self) -> bool:
        return True

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        s = self.resolution // self.shared.vae_scale
        return (batch, self.shared.latent_channels, s, s)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.encode_images(x, cache=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.shared.decode(z)

    def encode(self, prompts, sources=None, drop_text=None, drop_source=None) -> DCond:
        prompts = list(prompts)
        if drop_text is not None:
            prompts = ["" if d else p for p, d in zip(prompts, drop_text.tolist())]
        src = mask = None
        with_source = [False] * len(prompts)
        if sources is not None and self.is_edit:
            src = self.shared.encode_images(sources)
            mask = torch.ones(len(prompts), device=self.device)
            if drop_source is not None:
                mask = mask * (~drop_source.to(self.device)).float()
            with_source = [bool(m) for m in mask.tolist()]
        return DCond(self.encode_text(prompts, with_source), src, mask)

    def velocity(self, x_t, t, cond: DCond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(len(x_t))
        with self._placed():
            v = self.forward(self.model, x_t, t.float(), cond)
        return v.to(x_t.dtype)

    def timesteps(self, n_steps: int | None = None, shift: float | None = None) -> torch.Tensor:
        """Explicit ``shift``: the engine's grid (``danceopd.core.flow.timesteps``). ``shift=None``: the pipeline's
        own scheduler grid (what ``<Pipeline>.__call__`` integrates on)."""
        from ...core.flow import timesteps as make_timesteps

        n = n_steps or self.sampling.steps
        if shift is not None:
            return make_timesteps(n, shift)
        sched = copy.deepcopy(self.shared.pipe.scheduler)
        sched.set_timesteps(**self.scheduler_kwargs(n))
        sig = sched.sigmas.detach().float().cpu()
        if len(sig) != n + 1:
            raise RuntimeError(f"scheduler returned {len(sig)} sigmas for {n} steps")
        return sig

    def scheduler_kwargs(self, n: int) -> dict:
        return {"num_inference_steps": n}

    # -- guided fields and sampling ----------------------------------------------------------------------------------
    def guided_field(self, prompts, sources=None, text_scale=None, image_scale=None):
        """CFG field over this backend (see ``danceopd.backends.base.guided_field``); scales default to the
        sampler's."""
        s_txt = self.sampling.text_scale if text_scale is None else text_scale
        s_img = self.sampling.image_scale if image_scale is None else image_scale
        if not self.is_edit:
            sources = None
        return guided_field(self, prompts, sources, s_txt, s_img)

    @torch.no_grad()
    def sample_latents(self, prompts, sources: torch.Tensor | None, noise: torch.Tensor, steps=None, shift=None,
                       text_scale=None, image_scale=None) -> torch.Tensor:
        from ...core.flow import ode_sample

        field = self.guided_field(prompts, sources, text_scale, image_scale)
        return ode_sample(field, noise.to(self.device), self.timesteps(steps, shift))

    @torch.no_grad()
    def sample(self, prompts, sources: np.ndarray | None = None, seed: int = 0, steps=None, shift=None,
               text_scale=None, image_scale=None, batch_size: int = 4) -> np.ndarray:
        """uint8 [B, H, W, 3]; edits when ``sources`` (uint8 [B, H, W, 3], model resolution) is given. Integrates
        on the pipeline scheduler's grid unless ``shift`` is given."""
        if sources is not None and not self.is_edit:
            raise UserError("this model has no source-image input (a T2I model); use an edit model")
        view = self.eval_view()
        was_training = view.net.training
        view.net.eval()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.latent_shape(len(prompts)), generator=g)
        out = []
        try:
            for i in range(0, len(prompts), batch_size):
                src = None if sources is None else images_to_tensor(sources[i:i + batch_size]).to(self.device)
                z = view.sample_latents(prompts[i:i + batch_size], src, noise[i:i + batch_size], steps, shift,
                                        text_scale, image_scale)
                out.append(tensor_to_images(self.decode(z)))
        finally:
            view.net.train(was_training)
        return np.concatenate(out)

    def eval_view(self):
        """This backend over the bare module (no DDP wrapper: safe to call from the main process alone)."""
        view = copy.copy(self)
        view.model = self.net
        return view

    # -- helpers -----------------------------------------------------------------------------------------------------
    @contextmanager
    def _placed(self):
        """Teacher CPU offload: the transformer visits the device only for the call."""
        if not self.offload:
            yield
            return
        self.net.to(self.device)
        try:
            yield
        finally:
            self.net.to("cpu")

    def encode_text(self, prompts: list[str], with_source: list[bool]) -> dict:
        """Batched text conditions; ``with_source[i]``: row i is conditioned on a source image (Z-Image's omni
        prompt format differs)."""
        raise NotImplementedError

    def source_rows(self, cond: DCond, n: int) -> torch.Tensor:
        """[n] bool: rows that carry a (not dropped) source."""
        if cond.source is None:
            return torch.zeros(n, dtype=torch.bool)
        return (cond.source_mask > 0).cpu()

    def forward(self, model, x_t, t, cond: DCond) -> torch.Tensor:
        raise NotImplementedError


def _cast_in(module, args):
    x = args[0] if args else None
    w = next(module.parameters())
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != w.dtype:
        module._danceopd_io_dtype = x.dtype
        return (x.to(w.dtype), *args[1:])
    module._danceopd_io_dtype = None
    return None


def _cast_out(module, args, out):
    dt = getattr(module, "_danceopd_io_dtype", None)
    if dt is not None and isinstance(out, torch.Tensor):
        return out.to(dt)
    return None


def cast_io_to_weights(module: torch.nn.Module) -> torch.nn.Module:
    """A float32 trainable layer inside a 16-bit frozen model (an SD3 edit student's widened patch embedding over
    bf16 / fp16 weights): its input is cast to its weights' dtype and its output back to the input's dtype
    (a no-op when they agree; under autocast the layer still runs in autocast's dtype). Idempotent."""
    if not getattr(module, "_danceopd_io_cast", False):
        module.register_forward_pre_hook(_cast_in)
        module.register_forward_hook(_cast_out)
        module._danceopd_io_cast = True
    return module


def stack_entries(entries: list[tuple]) -> list[torch.Tensor]:
    return [torch.stack([e[i] for e in entries]) for i in range(len(entries[0]))]


def calculate_shift(seq_len: int, base_len: int = 256, max_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """Resolution-dependent shift ``mu`` (linear in the image token count), as the Flux-style pipelines use it."""
    m = (max_shift - base_shift) / (max_len - base_len)
    return seq_len * m + base_shift - m * base_len


def dynamic_kwargs(scheduler, seq_len: int, n: int, default_max_shift: float = 1.15) -> dict:
    c = scheduler.config
    return {"mu": calculate_shift(seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                  c.get("base_shift", 0.5), c.get("max_shift", default_max_shift))}


def run_grouped(x: torch.Tensor, groups: list[tuple[torch.Tensor, object]], fn) -> torch.Tensor:
    """Evaluate ``fn(index_tensor, key)`` per group of rows and reassemble the rows in their original order."""
    outs, order = [], []
    for idx, key in groups:
        if len(idx):
            outs.append(fn(idx, key))
            order.append(idx)
    if len(outs) == 1:
        return outs[0]
    perm = torch.cat(order)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return torch.cat(outs)[inv.to(outs[0].device)]
