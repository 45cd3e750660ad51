"""Image plumbing shared by the judge, the calibration generators and the training of the eval networks."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

JUDGE_RES = 32


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily run torch ops with ``n`` intra-op threads (None = leave the setting alone). The eval networks
    run small batches; on a shared CPU one thread is several times faster than two that wait on each other."""
    old = torch.get_num_threads()
    if n is not None and n > 0 and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def check_images(images, n: int | None = None, res: int | None = None, what: str = "images") -> np.ndarray:
    """Validate a uint8 [B, H, W, 3] array (square); returns it as a contiguous numpy array."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"{what}: expected uint8 [B, H, W, 3] with H == W, got {a.dtype} {list(a.shape)}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{what}: expected {n} images, got {a.shape[0]}")
    if res is not None and a.shape[1] != res:
        raise ValueError(f"{what}: expected {res}x{res} images, got {a.shape[1]}x{a.shape[2]}")
    return np.ascontiguousarray(a)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.require(images, requirements=["C", "W"])).permute(0, 3, 1, 2).float().div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3] (rounded, clipped)."""
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def judge_input(x: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] -> [B, 3, 32, 32]: H a multiple of 32 is box-downsampled (64 px -> 2x2 means), anything
    else is resized with antialiasing."""
    h = x.shape[-1]
    if h == JUDGE_RES:
        return x
    if h % JUDGE_RES == 0:
        return F.avg_pool2d(x, h // JUDGE_RES)
    return F.interpolate(x, size=(JUDGE_RES, JUDGE_RES), mode="bilinear", antialias=True, align_corners=False)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of float [B, 3, H, W]; ``sigma`` in pixels, a float or one per
    image. Sigmas below 0.05 px leave the image unchanged."""
    if np.isscalar(sigma):
        return _blur(x, float(sigma))
    out = x.clone()
    for i, s in enumerate(float(v) for v in sigma):
        out[i: i + 1] = _blur(x[i: i + 1], s)
    return out


def _blur(x: torch.Tensor, s: float) -> torch.Tensor:
    if s < 0.05:
        return x.clone()
    c, h, w = x.shape[1:]
    k = _gauss_kernel(s)
    r = min((k.numel() - 1) // 2, h - 1, w - 1)
    k = k[(k.numel() - 1) // 2 - r: (k.numel() - 1) // 2 + r + 1]
    k = k / k.sum()
    y = F.pad(x, (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


# degrade:<level> = Gaussian blur of sigma DEGRADE_BLUR * level (in 32-px pixels) then Gaussian noise of std
# DEGRADE_NOISE * level (fraction of full range), quantized to uint8.
DEGRADE_BLUR = 1.2
DEGRADE_NOISE = 0.10


def degrade(images: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Blur + noise of strength ``level`` in [0, 1] (0 = unchanged)."""
    images = check_images(images)
    if level <= 0:
        return images.copy()
    res = images.shape[1]
    x = gaussian_blur(to_float(images), DEGRADE_BLUR * level * res / JUDGE_RES)
    noise = rng.standard_normal(x.shape).astype(np.float32) * (DEGRADE_NOISE * level)
    return to_uint8(x + torch.from_numpy(noise))


def box_upscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale of one uint8 [H, W, 3] image (for contact sheets)."""
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)
