"""The standard real-image metrics, run only when their weights are already on this machine (nothing is ever
downloaded): Inception FID (torchmetrics + torch-fidelity), CLIPScore (torchmetrics + transformers, an OpenAI CLIP
in the Hugging Face cache) and LPIPS (the ``lpips`` package + torchvision's AlexNet in the torch hub cache).
Otherwise each reports ``{"value": null, "reason": ...}``.

The plumbing (``fid_torchmetrics``, ``clip_score_torchmetrics``, ``lpips_package``) takes the network as an
argument, so tests drive it offline with random-init networks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .imageops import check_images, judge_input, to_float

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"
CLIP_REPO = "openai/clip-vit-base-patch16"


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _offline():
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------ plumbing


def fid_torchmetrics(real: np.ndarray, fake: np.ndarray, feature: nn.Module | int = 2048,
                     weights_path: str | None = None, batch_size: int = 64) -> float:
    """FID through ``torchmetrics.image.fid.FrechetInceptionDistance``. ``feature`` is an Inception feature size
    (needs torch-fidelity and local weights) or any module mapping float [B, 3, H, W] in [0, 1] to [B, D]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = check_images(real, what="real images"), check_images(fake, what="fake images")
    custom = isinstance(feature, nn.Module)
    kw = {} if custom else {"feature_extractor_weights_path": weights_path}
    h = real.shape[1]
    metric = FrechetInceptionDistance(feature=feature, normalize=custom, input_img_size=(3, h, h), **kw)
    for arr, is_real in ((real, True), (fake, False)):
        for i in range(0, len(arr), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(arr[i: i + batch_size])).permute(0, 3, 1, 2)
            with torch.inference_mode():
                metric.update(x.float() / 255 if custom else x, real=is_real)
    return float(metric.compute())


class TorchmetricsClipAdapter(nn.Module):
    """Makes a world CLIP model look like the (model, processor) pair torchmetrics' CLIPScore expects."""

    class _Config:  # no text_config: torchmetrics then skips its max-length check
        pass

    def __init__(self, net: nn.Module, tokenizer):
        super().__init__()
        self.net, self.tokenizer = net, tokenizer
        self.config = self._Config()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.image(judge_input(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.text(input_ids)

    def processor(self, images=None, text=None, return_tensors="pt", padding=True):
        if images is not None:
            xs = [im.float() / 255 if im.dtype == torch.uint8 else im.float() for im in images]
            return {"pixel_values": torch.stack(xs)}
        ids = self.tokenizer.encode(list(text))
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def clip_score_torchmetrics(images: np.ndarray, texts: list[str], model_factory: Callable[[], tuple]) -> float:
    """torchmetrics ``CLIPScore`` (mean of 100 * cos, floored at 0) with the model from ``model_factory()``."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    images = check_images(images)
    metric = CLIPScore(model_name_or_path=model_factory)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        metric.update(x, list(texts))
    return float(metric.compute())


def lpips_package(a: np.ndarray, b: np.ndarray, net: nn.Module, size: int = 64) -> np.ndarray:
    """Per-pair distance from an ``lpips.LPIPS`` module; images upsampled (bilinear) to ``size`` px, in [-1, 1]."""
    a, b = check_images(a), check_images(b, n=len(a))

    def prep(x):
        t = to_float(x)
        if t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        return t * 2 - 1

    with torch.inference_mode():
        return net(prep(a), prep(b)).flatten().double().numpy()


# ------------------------------------------------------------------------------------------------ availability


def inception_fid_status() -> tuple[bool, str | None]:
    if not _has_module("torch_fidelity"):
        return False, "torch-fidelity is not installed (torchmetrics' Inception FID needs it)"
    if not _hub_file(INCEPTION_WEIGHTS).is_file():
        return False, f"Inception weights not found locally ({_hub_file(INCEPTION_WEIGHTS)}); nothing is downloaded"
    return True, None


def openai_clip_status() -> tuple[bool, str | None]:
    if not _has_module("transformers") or not _has_module("huggingface_hub"):
        return False, "transformers is not installed"
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", "preprocessor_config.json"):
        if not isinstance(try_to_load_from_cache(CLIP_REPO, name), str):
            return False, f"{CLIP_REPO} is not in the local Hugging Face cache; nothing is downloaded"
    if not any(isinstance(try_to_load_from_cache(CLIP_REPO, w), str) for w in ("model.safetensors", "pytorch_model.bin")):
        return False, f"{CLIP_REPO} weights are not in the local Hugging Face cache; nothing is downloaded"
    return True, None


def lpips_status() -> tuple[bool, str | None]:
    if not _has_module("lpips"):
        return False, "the lpips package is not installed"
    if not _hub_file(ALEXNET_WEIGHTS).is_file():
        return False, f"AlexNet weights not found locally ({_hub_file(ALEXNET_WEIGHTS)}); nothing is downloaded"
    return True, None


def _openai_clip_factory():
    from transformers import CLIPModel, CLIPProcessor

    with _offline():
        return (CLIPModel.from_pretrained(CLIP_REPO, local_files_only=True),
                CLIPProcessor.from_pretrained(CLIP_REPO, local_files_only=True))


def standard_metrics(t2i_images: np.ndarray | None, t2i_reference: np.ndarray | None, prompts: list[str] | None,
                     edit_outputs: np.ndarray | None, edit_targets: np.ndarray | None) -> dict:
    """``{"fid_inception", "clip_score_openai", "lpips_alex"}``, each ``{"value": float | None, "reason": str |
    None}``. Missing inputs (suite not run) report a reason too."""
    out = {}

    def run(name, ok_reason, have, fn):
        ok, reason = ok_reason
        if not have:
            out[name] = {"value": None, "reason": "the suite that feeds this metric was not run"}
        elif not ok:
            out[name] = {"value": None, "reason": reason}
        else:
            try:
                out[name] = {"value": float(fn()), "reason": None}
            except Exception as e:  # a broken local install must not sink the whole evaluation
                out[name] = {"value": None, "reason": f"failed: {type(e).__name__}: {e}"}

    have_t2i = t2i_images is not None and len(t2i_images) > 1
    run("fid_inception", inception_fid_status(), have_t2i,
        lambda: fid_torchmetrics(t2i_reference, t2i_images, 2048, str(_hub_file(INCEPTION_WEIGHTS))))
    run("clip_score_openai", openai_clip_status(), have_t2i,
        lambda: clip_score_torchmetrics(t2i_images, prompts, _openai_clip_factory))

    def _lpips():
        import lpips

        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        sd = torch.load(_hub_file(ALEXNET_WEIGHTS), map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        _load_alexnet_slices(net.net, feats)
        return float(lpips_package(edit_outputs, edit_targets, net.eval()).mean())

    run("lpips_alex", lpips_status(), edit_outputs is not None and len(edit_outputs) > 0, _lpips)
    return out


def _load_alexnet_slices(pn: nn.Module, feats: dict) -> None:
    """Copy torchvision AlexNet ``features.*`` weights into lpips' sliced AlexNet (slices keep the original
    layer indices as child names)."""
    for name, mod in pn.named_modules():
        if isinstance(mod, nn.Conv2d):
            idx = name.rsplit(".", 1)[-1]
            mod.weight.data.copy_(feats[f"{idx}.weight"])
            mod.bias.data.copy_(feats[f"{idx}.bias"])
