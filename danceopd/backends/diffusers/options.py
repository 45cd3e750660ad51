"""The ``diffusers:`` config section, weight dtypes, the diffusers import guard and the run-folder file names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import UserError

FORMAT = "danceopd.diffusers/1"
MODEL_JSON = "danceopd_model.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
CHECK_FILE = "lora_check.safetensors"
EDIT_WEIGHTS_FILE = "danceopd_edit_weights.safetensors"
TESTED_DIFFUSERS = "0.42.1"
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
