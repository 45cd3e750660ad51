"""Shared adapter code for the diffusers backends (``sd3``, ``zimage``, ``flux_kontext``).

A diffusers backend is an adapter of the one engine (``danceopd.train.distill``): it implements the backend
protocol (``encode``/``velocity``/``guided_field``/``timesteps``/``latent_shape``/``encode_images``/``sample``)
over a diffusers transformer, and the family protocol (``check``/``load_teacher``/``build_student``/``export``).

Conventions (``danceopd.core.flow``): states are VAE latents ``[B, C, H/8, W/8]`` (scaled and shifted the way the
pipeline does it), ``x_t = (1 - t) x_0 + t noise``, ``v = noise - x_0``, ``t = 1`` is noise. Each family maps
(x_t, t) to its transformer's own time and sign conventions (checked against the pipelines' own scheduler steps
in ``tests/backends``).

Model specs (teachers, ``student.init``, ``--pipeline``)::

    [<family>:]<dir>[+transformer:<dir>][+lora:<dir|file>]...

``<dir>`` is a diffusers pipeline folder (``model_index.json``) or a danceopd run folder of this family
(``danceopd_model.json``: its init plus its LoRA or full transformer). ``+transformer:`` replaces the
transformer by a full checkpoint folder (``save_pretrained`` layout), ``+lora:`` fuses a diffusers-format LoRA
into it (in order). A CFG operator over any of these is the route's ``teacher_guidance`` (the engine's
``TeacherField``).

Text encoders, tokenizers and the VAE of one base folder are loaded once and shared (frozen) by every teacher and
the student; each backend owns its transformer. Prompt embeddings and source-image latents are cached (LRU), so a
step that queries the same conditions from the rollout, the teachers and the student encodes them once.

Export: a LoRA student writes ``pytorch_lora_weights.safetensors`` with ``<Pipeline>.save_lora_weights`` (keys
prefixed ``transformer.``, PEFT metadata included so rank and alpha round-trip), then checks that a fresh copy of
the init transformer with the file loaded through ``load_lora_weights`` gives the trained student's outputs on a
fixed input (``lora_check`` in ``danceopd_model.json``; inputs and outputs in ``lora_check.safetensors``). A full
student writes ``transformer/`` (``save_pretrained``).
"""

from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .base import guided_field
from .world import SamplingConfig, images_to_tensor, tensor_to_images

FORMAT = "danceopd.diffusers/1"
MODEL_JSON = "danceopd_model.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
CHECK_FILE = "lora_check.safetensors"
EDIT_WEIGHTS_FILE = "danceopd_edit_weights.safetensors"
TESTED_DIFFUSERS = "0.42.1"
FAMILY_NAMES = ("world", "sd3", "zimage", "flux_kontext")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DiffusersOptions:
    """``diffusers:`` section of a distillation config (ignored by the ``world`` backend)."""

    resolution: int = 1024             # image side in pixels (square); latents are resolution / 8
    dtype: str = "float32"             # frozen weights: teachers, text encoders, VAE, a LoRA student's base
    teacher_device: str = "same"       # same | cpu_offload (teacher transformers live on the CPU between calls)
    gradient_checkpointing: bool = False   # on the student transformer only
    max_sequence_length: int = 256     # text tokens (T5 / Qwen)
    guidance: float = 2.5              # flux_kontext: the distilled guidance embedding value
    lora_check: bool = True            # verify the exported LoRA by reloading it through diffusers
    cache_size: int = 512              # prompt / source-latent LRU entries per base pipeline

    def validate(self):
        if self.resolution < 16 or self.resolution % 16:
            raise ValueError(f"diffusers.resolution must be a positive multiple of 16, got {self.resolution}")
        if self.dtype not in DTYPES:
            raise ValueError(f"diffusers.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.teacher_device not in ("same", "cpu_offload"):
            raise ValueError(f"diffusers.teacher_device must be 'same' or 'cpu_offload', got {self.teacher_device!r}")
        if not 1 <= self.max_sequence_length <= 512:
            raise ValueError("diffusers.max_sequence_length must be in [1, 512]")
        if self.cache_size < 0:
            raise ValueError("diffusers.cache_size must be >= 0")


def check_precision(dtype: str, mixed_precision: str) -> None:
    """Refuse (ValueError, one line) a weight dtype / mixed-precision pair that cannot train. float16 weights under
    bf16 autocast fail in all three backends (measured on CPU: layer norms and autocast reject the fp16/bf16 mix)
    and could gain nothing over bfloat16 weights."""
    if dtype == "float16" and mixed_precision == "bf16":
        raise ValueError("diffusers.dtype=float16 with train.mixed_precision=bf16 cannot train (bf16 autocast over "
                         "float16 weights mixes two 16-bit formats); use diffusers.dtype: bfloat16 with bf16, or "
                         "train.mixed_precision: no with float16")


def check_device_dtype(dtype: torch.dtype, what: str = "diffusers.dtype=bfloat16") -> None:
    """bfloat16 on a CUDA GPU without bfloat16 support (pre-Ampere) fails at the first kernel: refuse it up front."""
    if dtype == torch.bfloat16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise UserError(f"{what}: this GPU ({torch.cuda.get_device_name()}) has no bfloat16 support; use "
                        "diffusers.dtype: float16 with train.mixed_precision: no")


def require_diffusers(family: str, attr: str | None = None):
    try:
        import diffusers
    except ImportError:
        raise UserError(f"backend {family!r} needs diffusers: pip install 'danceopd[diffusers]' "
                        f"(tested with diffusers=={TESTED_DIFFUSERS})") from None
    if attr is not None and not hasattr(diffusers, attr):
        raise UserError(f"backend {family!r} needs a diffusers release that ships {attr} (installed: "
                        f"{diffusers.__version__}; tested with diffusers=={TESTED_DIFFUSERS})")
    return diffusers


def unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


# ---- model specs --------------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """A transformer as a chain of steps on top of one base pipeline folder."""

    text: str
    base: Path                                       # the diffusers pipeline folder (components and scheduler)
    ops: list[tuple[str, Path]] = field(default_factory=list)   # ("transformer"|"lora"|"edit_weights", path)
    info: dict = field(default_factory=dict)         # danceopd_model.json of a run folder, if the spec is one

    @property
    def edit(self) -> bool:
        return any(kind == "edit_weights" for kind, _ in self.ops) or bool(self.info.get("edit"))

    def canonical(self) -> str:
        return "+".join([str(self.base)] + [f"{k}:{p}" for k, p in self.ops])


_MOD_RE = re.compile(r"\+(?=(?:lora|transformer):)")


def lora_file(p: Path) -> Path:
    return p / LORA_FILE if p.is_dir() else p


def parse_spec(spec: str, family: str, _depth: int = 0) -> ModelSpec:
    """Parse and check (files only, nothing is loaded) a model spec of ``family``."""
    if _depth > 8:
        raise UserError(f"model {spec!r}: run folders nest too deeply (a cycle?)")
    s = str(spec).strip()
    m = re.match(r"^([a-z_0-9]+):(?!//)", s)
    if m and m.group(1) in FAMILY_NAMES:
        if m.group(1) != family:
            raise UserError(f"model {spec!r} is a {m.group(1)!r} model, but this backend is {family!r}")
        s = s[m.end():]
    head, *mods = _MOD_RE.split(s)
    if not head:
        raise UserError(f"model {spec!r}: empty path")
    root = Path(head).expanduser()
    if (root / MODEL_JSON).is_file():
        try:
            info = json.loads((root / MODEL_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{root / MODEL_JSON}: unreadable ({e})") from None
        if info.get("format") != FORMAT:
            raise UserError(f"{root / MODEL_JSON}: not a danceopd diffusers run (format {info.get('format')!r})")
        if info.get("family") != family:
            raise UserError(f"{root}: a {info.get('family')!r} run, but this backend is {family!r}")
        inner = parse_spec(info["init"], family, _depth + 1)
        ops = list(inner.ops)
        if info.get("edit_weights"):
            ops.append(("edit_weights", root / info["edit_weights"]))
        if info.get("kind") == "lora":
            ops.append(("lora", root / LORA_FILE))
        else:
            ops = [("transformer", root / "transformer")]
        spec_obj = ModelSpec(spec, inner.base, ops, info)
    elif (root / "model_index.json").is_file():
        spec_obj = ModelSpec(spec, root.resolve())
    elif root.exists():
        raise UserError(f"model {spec!r}: {root} is neither a diffusers pipeline folder (no model_index.json) nor a "
                        f"danceopd {family} run folder (no {MODEL_JSON})")
    else:
        raise UserError(f"model {spec!r}: {root} not found (expected a diffusers pipeline folder or a run folder)")
    for mod in mods:
        kind, _, path = mod.partition(":")
        p = Path(path).expanduser()
        if kind == "lora":
            if not lora_file(p).is_file():
                raise UserError(f"model {spec!r}: LoRA {p} not found (a .safetensors file or a folder with {LORA_FILE})")
            spec_obj.ops.append(("lora", lora_file(p).resolve()))
        else:
            if not (p / "config.json").is_file():
                raise UserError(f"model {spec!r}: transformer folder {p} has no config.json")
            spec_obj.ops.append(("transformer", p.resolve()))
    for kind, p in spec_obj.ops:
        if not p.exists():
            raise UserError(f"model {spec!r}: {kind} file {p} is missing (incomplete run folder?)")
    return spec_obj


def pipeline_class_name(base: Path) -> str:
    try:
        return json.loads((Path(base) / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{base}/model_index.json: unreadable ({e})") from None


# ---- shared frozen components ---------------------------------------------------------------------------------------
class LRU:
    def __init__(self, size: int):
        self.size, self.d = size, OrderedDict()

    def get(self, key):
        if key in self.d:
            self.d.move_to_end(key)
            return self.d[key]
        return None

    def put(self, key, value):
        if self.size <= 0:
            return
        self.d[key] = value
        self.d.move_to_end(key)
        while len(self.d) > self.size:
            self.d.popitem(last=False)


class Shared:
    """The frozen parts of one base pipeline (the pipeline object without its transformer), on one device."""

    def __init__(self, pipe, device, dtype, cache_size: int):
        self.pipe, self.device, self.dtype = pipe, torch.device(device), dtype
        self.text_cache, self.latent_cache = LRU(cache_size), LRU(cache_size)
        self._proj: dict = {}
        vae = pipe.vae
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels
        self.shift_factor = vae.config.shift_factor or 0.0
        self.scaling_factor = vae.config.scaling_factor

    @torch.no_grad()
    def cached(self, keys: list, compute) -> list:
        """Per-key entries from the LRU; ``compute(missing_keys) -> entries`` fills the misses in one batch."""
        out = [self.text_cache.get(k) for k in keys]
        missing = list(dict.fromkeys(k for k, o in zip(keys, out) if o is None))
        if missing:
            fresh = dict(zip(missing, compute(missing)))
            for k, v in fresh.items():
                self.text_cache.put(k, v)
            out = [fresh[k] if o is None else o for k, o in zip(keys, out)]
        return out

    def _fingerprint(self, pixels: torch.Tensor) -> list:
        """Exact-enough content keys for source images: two random float64 projections plus the shape."""
        n = pixels[0].numel()
        w = self._proj.get((n, pixels.device))
        if w is None:
            g = torch.Generator().manual_seed(n)
            w = torch.randn(n, 2, generator=g, dtype=torch.float64).to(pixels.device)
            self._proj[(n, pixels.device)] = w
        f = (pixels.reshape(len(pixels), -1).double() @ w).cpu().tolist()
        return [(tuple(pixels.shape[1:]), round(a, 9), round(b, 9)) for a, b in f]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> latents ``(mode - shift) * scale`` (float32)."""
        pixels = pixels.to(self.device)
        vae = self.pipe.vae

        def run(x):
            z = vae.encode(x.to(vae.dtype)).latent_dist.mode()
            return ((z.float() - self.shift_factor) * self.scaling_factor)

        if not cache:
            return run(pixels)
        keys = self._fingerprint(pixels)
        out = [self.latent_cache.get(k) for k in keys]
        idx = [i for i, o in enumerate(out) if o is None]
        if idx:
            z = run(pixels[idx])
            for j, i in enumerate(idx):
                out[i] = z[j]
                self.latent_cache.put(keys[i], z[j])
        return torch.stack(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype) / self.scaling_factor + self.shift_factor
        return vae.decode(z, return_dict=False)[0].float()


# ---- conditions --------------------------------------------------------------------------------------------------
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
        from ..core.flow import timesteps as make_timesteps

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
        from ..core.flow import ode_sample

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


# ---- the family ----------------------------------------------------------------------------------------------------
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


class DiffusersFamily:
    """Family protocol for a diffusers pipeline class. Subclasses set ``name``, ``pipeline_classes`` (accepted
    ``model_index.json`` class names), ``pipeline_attr`` (the diffusers class used to load), ``backend_cls``,
    ``default_lora_targets``, and may override ``make_edit`` / ``edit_parameters`` / ``load_edit_weights``."""

    name = ""
    pipeline_attr = ""
    pipeline_classes: tuple[str, ...] = ()
    backend_cls = DiffusersBackend
    handles_lora = True                  # the engine must not wrap the student with its own LoRA
    default_lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, opts: DiffusersOptions | None = None):
        self.opts = opts or DiffusersOptions()
        self._shared: dict = {}
        self._teachers: dict = {}
        self._device = torch.device("cpu")

    def with_options(self, opts: DiffusersOptions):
        import os

        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            raise UserError(f"backend {self.name!r} does not support FSDP yet: the student is exported from the main "
                            "process, which needs unsharded weights; use configs/accelerate/ddp.yaml or "
                            "deepspeed_zero2.yaml (with diffusers.teacher_device: cpu_offload to save memory)")
        check_device_dtype(DTYPES[opts.dtype])
        return type(self)(opts)

    @property
    def pipeline_cls(self):
        return getattr(require_diffusers(self.name, self.pipeline_attr), self.pipeline_attr)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.opts.dtype]

    # -- specs and loading ------------------------------------------------------------------------------------------
    def check(self, spec: str) -> ModelSpec:
        require_diffusers(self.name, self.pipeline_attr)
        s = parse_spec(spec, self.name)
        cls = pipeline_class_name(s.base)
        if cls not in self.pipeline_classes:
            raise UserError(f"model {spec!r}: {s.base} holds a {cls or 'unknown'} pipeline; backend {self.name!r} "
                            f"takes {', '.join(self.pipeline_classes)}")
        return s

    def shared(self, base: Path, device=None) -> Shared:
        device = torch.device(device) if device is not None else self._device
        key = (str(base), str(device))
        if key not in self._shared:
            pipe = self.pipeline_cls.from_pretrained(str(base), transformer=None, dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            for comp in pipe.components.values():
                if isinstance(comp, torch.nn.Module):
                    comp.to(device).eval().requires_grad_(False)
            self._shared[key] = Shared(pipe, device, self.dtype, self.opts.cache_size)
        return self._shared[key]

    def transformer_cls(self):
        import diffusers

        return getattr(diffusers, self._transformer_class_name())

    def _transformer_class_name(self) -> str:
        raise NotImplementedError

    def lora_pipe(self, shared: Shared, transformer):
        """A pipeline object around ``transformer`` sharing ``shared``'s frozen components (for the LoRA loader)."""
        comps = dict(shared.pipe.components)
        comps["transformer"] = transformer
        return self.pipeline_cls(**comps)

    def load_transformer(self, spec: ModelSpec, dtype: torch.dtype, device, fuse_last: bool = True):
        """Build the transformer a spec describes: base (or full replacement), LoRAs fused in order, SD3 edit
        weights. ``fuse_last=False`` leaves the final LoRA as a live PEFT adapter (the diffusers loading path)."""
        shared = self.shared(spec.base)
        src = spec.base / "transformer"
        ops = list(spec.ops)
        for kind, p in ops:
            if kind == "transformer":
                src = p
        last_t = max([i for i, (k, _) in enumerate(ops) if k == "transformer"], default=-1)
        tr = self.transformer_cls().from_pretrained(str(src), dtype=dtype)
        tr.to(device)
        for i, (kind, p) in enumerate(ops):
            if i <= last_t:
                continue
            if kind == "edit_weights":
                tr = self.load_edit_weights(tr, p)
            elif kind == "lora":
                pipe = self.lora_pipe(shared, tr)
                pipe.load_lora_weights(str(p), adapter_name=f"l{i}")
                if fuse_last or i != len(ops) - 1:
                    pipe.fuse_lora(components=["transformer"], adapter_names=[f"l{i}"])
                    pipe.unload_lora_weights()
                tr = pipe.transformer
        return tr

    def load_backend(self, spec: str, device="cpu", fuse: bool = True, offload: bool = False):
        s = self.check(spec)
        self._device = torch.device(device)
        shared = self.shared(s.base, device)
        tr = self.load_transformer(s, self.dtype, "cpu" if offload else device, fuse_last=fuse)
        tr.eval().requires_grad_(False)
        return self.backend_cls(self, shared, tr, self.opts, s, offload=offload)

    def backend_from_pipeline(self, pipe, device="cpu"):
        """Wrap an already loaded pipeline (e.g. with ``load_lora_weights`` applied) as a backend."""
        self._device = torch.device(device)
        key = (f"pipe:{id(pipe)}", str(device))
        if key not in self._shared:
            comps = dict(pipe.components)
            tr = comps.pop("transformer")
            shell = self.pipeline_cls(**{**comps, "transformer": None})
            shell.set_progress_bar_config(disable=True)
            self._shared[key] = Shared(shell, device, self.dtype, self.opts.cache_size)
        else:
            tr = pipe.transformer
        tr.eval().requires_grad_(False)
        return self.backend_cls(self, self._shared[key], tr, self.opts, None)

    def load_teacher(self, spec: str, device="cpu"):
        self._device = torch.device(device)
        key = self.check(spec).canonical()
        if key not in self._teachers:
            self._teachers[key] = self.load_backend(spec, device, offload=self.opts.teacher_device == "cpu_offload")
        return self._teachers[key]

    # -- students -----------------------------------------------------------------------------------------------------
    def make_edit(self, transformer):
        """Give a T2I transformer a source-image input whose new weights are zero (base outputs unchanged)."""
        return transformer

    def is_edit_transformer(self, transformer) -> bool:
        return True

    def edit_parameters(self, transformer) -> dict[str, torch.nn.Parameter]:
        """Non-LoRA weights an edit student trains and exports next to its LoRA (SD3: the widened patch embed)."""
        return {}

    def load_edit_weights(self, transformer, path: Path):
        return transformer

    def build_student(self, init: str, teachers: list, needs_edit: bool, merge: list[float] | None,
                      freeze_text: bool, lora=None):
        from ..methods.weight_merge import merge_state_dicts

        if not freeze_text:
            raise UserError(f"student.freeze_text: false is not supported by backend {self.name!r} (the text "
                            "encoders are shared, frozen and cached)")
        use_lora = lora is not None and lora.enabled
        dtype = self.dtype if use_lora else torch.float32
        device = self._device
        if init == "merged":
            trs = [t.net for t in teachers]
            edit = needs_edit or any(self.is_edit_transformer(t) for t in trs)
            states = []
            for t in trs:
                if edit and not self.is_edit_transformer(t):
                    t = self.make_edit(copy.deepcopy(t))
                states.append({k: v.float() for k, v in t.state_dict().items()})
            coeffs = merge or [1.0 / len(states)] * len(states)
            spec = teachers[0].spec
            tr = self.transformer_cls().from_config(dict(unwrap(trs[0]).config))
            if edit and not self.is_edit_transformer(tr):
                tr = self.make_edit(tr)
            tr.load_state_dict(merge_state_dicts(states, coeffs))
            tr.to(device)
            if dtype != torch.float32:
                tr.to(dtype)
            init_text = None
        else:
            spec = self.check(init)
            tr = self.load_transformer(spec, dtype, device)
            init_text = spec.canonical()
        if needs_edit and not self.is_edit_transformer(tr):
            tr = self.make_edit(tr)
        shared = self.shared(spec.base, device)
        tr.requires_grad_(not use_lora)
        if use_lora:
            self._add_lora(tr, lora)
            extra = self.edit_parameters(tr)
            for p in extra.values():
                p.data = p.data.float()
                p.requires_grad_(True)
            for name in sorted({n.rsplit(".", 1)[0] for n in extra}):
                cast_io_to_weights(unwrap(tr).get_submodule(name))
        else:
            tr.float()
        if self.opts.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        tr.train()
        be = self.backend_cls(self, shared, tr, self.opts, spec)
        be.init_spec = init_text
        be.base_spec = spec
        return be

    def _add_lora(self, transformer, lora):
        from peft import LoraConfig as PeftLoraConfig

        from ..train.common import LoraConfig

        targets = list(lora.targets)
        if targets == LoraConfig().targets:   # the engine's default names the world model's layers
            targets = list(self.default_lora_targets)
        names = [n for n, _ in transformer.named_modules()]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.split(".")[-1] for n, m in transformer.named_modules()
                             if isinstance(m, torch.nn.Linear)})
            raise UserError(f"student.lora.targets: no module of the {self.name} transformer is named {missing}; "
                            f"linear layer names: {', '.join(leaves[:30])}")
        transformer.add_adapter(PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=targets, init_lora_weights=True))
        for n, p in transformer.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
                p.requires_grad_(True)

    # -- export -------------------------------------------------------------------------------------------------------
    def export(self, student, out: Path, sampling: SamplingConfig, meta: dict, lora: bool) -> Path:
        from accelerate.utils import extract_model_from_parallel
        from safetensors.torch import save_file

        from ..train.checkpoint import write_json_atomic

        out = Path(out)
        # the bare module, without Accelerate's mixed-precision forward wrapper (training is over)
        net = extract_model_from_parallel(student.model, keep_fp32_wrapper=False)
        student.model = net
        was_training = net.training
        net.eval()
        info = {"format": FORMAT, "family": self.name, "kind": "lora" if lora else "full",
                "edit": bool(student.is_edit and self.is_edit_transformer(net)),
                "resolution": student.resolution, "sampling": dict(sampling.__dict__), "meta": meta}
        if lora:
            if getattr(student, "init_spec", None) is None:
                raise UserError("a LoRA student needs a loadable student.init (not 'merged')")
            from peft.utils import get_peft_model_state_dict

            info["init"] = student.init_spec
            sd = {k: v.detach().float().contiguous().cpu() for k, v in get_peft_model_state_dict(net).items()}
            self.pipeline_cls.save_lora_weights(str(out), transformer_lora_layers=sd,
                                                transformer_lora_adapter_metadata=net.peft_config["default"].to_dict())
            extra = self.edit_parameters(net)
            if extra:
                info["edit_weights"] = EDIT_WEIGHTS_FILE
                save_file({k: v.detach().float().contiguous().cpu() for k, v in extra.items()},
                          str(out / info["edit_weights"]))
        else:
            info["init"] = str(student.base_spec.base)
            net.save_pretrained(str(out / "transformer"))
        write_json_atomic(out / MODEL_JSON, info)
        if lora and self.opts.lora_check:
            info["lora_check"] = self.check_lora(student, out)
            write_json_atomic(out / MODEL_JSON, info)
        net.train(was_training)
        return out

    @torch.no_grad()
    def check_lora(self, student, out: Path) -> dict:
        """Reload the exported LoRA through the pipeline's ``load_lora_weights`` into a fresh transformer built
        from the student's init, and compare transformer outputs with the trained student's on a fixed input."""
        from safetensors.torch import save_file

        spec = parse_spec(str(out), self.name)
        fresh_tr = self.load_transformer(spec, self.dtype, student.device, fuse_last=False)
        fresh_tr.eval()
        fresh = self.backend_cls(self, student.shared, fresh_tr, self.opts, spec)
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(student.latent_shape(1), generator=g).to(student.device)
        t = torch.tensor([0.7], device=student.device)
        prompt = ["a photo of a red apple on a wooden table"]
        src = None
        if student.is_edit:
            src = (torch.rand((1, 3, student.resolution, student.resolution), generator=g) * 2 - 1)
        student = student.eval_view()
        v_s = student.velocity(x, t, student.encode(prompt, src)).float()
        v_f = fresh.velocity(x, t, fresh.encode(prompt, src)).float()
        err = float((v_s - v_f).abs().max())
        scale = float(v_s.abs().max()) + 1e-6
        tol = 1e-4 if self.dtype == torch.float32 else 3e-2
        tensors = {"x": x.cpu(), "t": t.cpu(), "v_student": v_s.cpu()}
        if src is not None:
            tensors["source"] = src.cpu()
        save_file(tensors, str(out / CHECK_FILE), metadata={"prompt": prompt[0]})
        del fresh, fresh_tr
        result = {"max_abs_diff": err, "relative": err / scale, "ok": err / scale <= tol, "prompt": prompt[0]}
        if not result["ok"]:
            raise RuntimeError(f"LoRA self-check failed: the LoRA reloaded through diffusers differs from the "
                               f"trained student by {err:.3g} (relative {err / scale:.3g} > {tol})")
        return result


# ---- generation entry points (CLI) -------------------------------------------------------------------------------
PIPELINE_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "ZImagePipeline": "zimage",
                     "FluxKontextPipeline": "flux_kontext", "FluxPipeline": "flux_kontext"}
DEFAULT_SAMPLING = {   # the pipelines' own defaults (Z-Image's guidance g is our text_scale 1 + g)
    "sd3": SamplingConfig(steps=28, text_scale=7.0),
    "zimage": SamplingConfig(steps=50, text_scale=6.0),
    "flux_kontext": SamplingConfig(steps=28, text_scale=1.0),
}


def is_diffusers_run(path) -> bool:
    return Path(str(path)).is_dir() and (Path(str(path)) / MODEL_JSON).is_file()


def generation_dtype(device: torch.device) -> str:
    """Weights for sampling: bfloat16 on a GPU that has it, float16 on older GPUs, float32 on the CPU."""
    if device.type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def load_for_generation(model: str | None = None, pipeline: str | None = None, lora: str | None = None,
                        resolution: int | None = None, device=None, dtype: str | None = None):
    """A backend for ``danceopd sample/edit``: ``--pipeline DIR [--lora DIR|FILE]`` (the diffusers pipeline, the
    LoRA loaded with ``load_lora_weights``) or ``--model RUN`` (a danceopd diffusers run folder). ``dtype``: the
    weights' dtype (default ``generation_dtype``)."""
    from .registry import get_family

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or generation_dtype(device)
    info: dict = {}
    if pipeline is None:
        info = json.loads((Path(model) / MODEL_JSON).read_text(encoding="utf-8"))
        fam_name = info.get("family", "")
    else:
        base = Path(pipeline)
        if not (base / "model_index.json").is_file():
            raise UserError(f"--pipeline {base}: not a diffusers pipeline folder (no model_index.json)")
        cls = pipeline_class_name(base)
        if cls not in PIPELINE_FAMILIES:
            raise UserError(f"--pipeline {base}: {cls or 'unknown'} pipelines are not supported; supported: "
                            f"{', '.join(PIPELINE_FAMILIES)}")
        fam_name = PIPELINE_FAMILIES[cls]
        if lora is not None and is_diffusers_run(lora):
            info = json.loads((Path(lora) / MODEL_JSON).read_text(encoding="utf-8"))
    res = resolution or int(info.get("resolution") or 1024)
    family = get_family(fam_name).with_options(DiffusersOptions(resolution=res, dtype=dtype))
    if pipeline is None:
        be = family.load_backend(str(model), device, fuse=False)   # the diffusers loading path, unfused
    else:
        require_diffusers(fam_name, family.pipeline_attr)
        pipe = family.pipeline_cls.from_pretrained(str(base), dtype=family.dtype)
        pipe.set_progress_bar_config(disable=True)
        if lora is not None:
            lp = Path(lora)
            if info:
                init = parse_spec(info["init"], fam_name)
                if init.base != base.resolve() or init.ops:
                    raise UserError(f"--lora {lp}: this LoRA was trained on top of {info['init']!r}, not the plain "
                                    f"pipeline {base}; sample with --model {lp} instead")
                if info.get("kind") != "lora":
                    raise UserError(f"--lora {lp}: a full-weights run (no LoRA); sample with --model {lp}")
                if info.get("edit_weights"):
                    pipe.transformer = family.load_edit_weights(pipe.transformer, lp / info["edit_weights"])
            if lp.is_dir():
                if not (lp / LORA_FILE).is_file():
                    raise UserError(f"--lora {lp}: no {LORA_FILE} in this folder")
                pipe.load_lora_weights(str(lp))
            elif lp.is_file():
                pipe.load_lora_weights(str(lp.parent), weight_name=lp.name)
            else:
                raise UserError(f"--lora {lp}: not found")
        pipe.to(device)
        be = family.backend_from_pipeline(pipe, device)
    be.sampling = SamplingConfig(**info["sampling"]) if info.get("sampling") else DEFAULT_SAMPLING[fam_name]
    return be
