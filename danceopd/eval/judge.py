"""The judge: a frozen CNN scene parser (``JudgeNet``) that reads a world image back into its layout
``(background, style, slots)`` (the same tuple ``Scene.layout()`` gives), read twice (the image and its mirror
image, log-probabilities summed); the naturalness critic (``CriticNet``) behind PQ; the FID feature and the
LPIPS-style distance from the judge's backbone.

Images of any square size are accepted; 64 px images are box-downsampled to 32 px before judging.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..world.vocab import WorldConfig
from .imageops import check_images, judge_input, to_float
from .nets import (
    ASSET_DIR,
    CRITIC_FILE,
    JUDGE_FILE,
    JUDGE_VERSION,
    CriticNet,
    JudgeNet,
    critic_from_file,
    judge_from_file,
    normalize_input,
)


class LayoutCodec:
    """Class indices of the judge's heads. Slot class 0 = empty, 1 + shape * n_colors + color otherwise; style
    class 0 = None, 1 + index in ``cfg.styles`` otherwise."""

    def __init__(self, shapes, colors, backgrounds, styles, grid: int):
        self.shapes, self.colors = tuple(shapes), tuple(colors)
        self.backgrounds, self.styles = tuple(backgrounds), tuple(styles)
        self.grid = grid
        self.slot_classes: list[tuple[str, str] | None] = [None] + [(s, c) for s in self.shapes for c in self.colors]
        self.style_classes: list[str | None] = [None, *self.styles]
        self._slot_index = {v: i for i, v in enumerate(self.slot_classes)}
        self._style_index = {v: i for i, v in enumerate(self.style_classes)}
        self._bg_index = {v: i for i, v in enumerate(self.backgrounds)}

    @staticmethod
    def for_world(cfg: WorldConfig) -> LayoutCodec:
        return LayoutCodec(cfg.shapes, cfg.colors, cfg.backgrounds, cfg.styles, cfg.grid)

    def vocab(self) -> dict:
        return {"shapes": list(self.shapes), "colors": list(self.colors), "backgrounds": list(self.backgrounds),
                "styles": list(self.styles), "grid": self.grid}

    @property
    def n_slots(self) -> int:
        return self.grid * self.grid

    def encode(self, layout: tuple) -> tuple[int, int, list[int]]:
        bg, style, slots = layout
        return self._bg_index[bg], self._style_index[style], [self._slot_index[s] for s in slots]

    def decode(self, bg: int, style: int, slots) -> tuple:
        return (self.backgrounds[int(bg)], self.style_classes[int(style)],
                tuple(self.slot_classes[int(s)] for s in slots))


@dataclass
class Reading:
    """What the judge saw in a batch: layouts, naturalness in [0, 1], pooled features (FID)."""

    layouts: list[tuple]
    quality: np.ndarray
    features: np.ndarray


class Judge:
    """The scene parser (``JudgeNet``) and the naturalness critic (``CriticNet``) behind one interface."""

    def __init__(self, net: JudgeNet, meta: dict, critic: CriticNet, critic_meta: dict):
        self.net = net.eval().requires_grad_(False)
        self.critic = critic.eval().requires_grad_(False)
        self.meta, self.critic_meta = meta, critic_meta
        self.version = meta.get("version", "unversioned")
        v = meta["vocab"]
        self.codec = LayoutCodec(v["shapes"], v["colors"], v["backgrounds"], v["styles"], v["grid"])
        # PQ = 10 * min(1, q / q_clean); q_clean = the critic's 10th percentile on clean renders (training time)
        self.q_clean = float(critic_meta.get("q_clean", 1.0))
        g = self.codec.grid
        self._mirror = torch.tensor([r * g + (g - 1 - c) for r in range(g) for c in range(g)])

    def check_world(self, cfg: WorldConfig) -> None:
        if LayoutCodec.for_world(cfg).vocab() != self.codec.vocab():
            raise UserError("the shipped judge reads the default ShapesWorld vocabulary only; retrain it with "
                            "scripts/train_eval_nets.py for another world")

    @torch.inference_mode()
    def _forward(self, images: np.ndarray, batch_size: int):
        images = check_images(images)
        for i in range(0, len(images), batch_size):
            x = judge_input(to_float(images[i: i + batch_size]))
            out = self.net(x)
            # test-time mirror: every shape is left-right symmetric, so the mirrored image read with mirrored
            # slots is a second opinion; the two readings' log-probabilities are summed
            flip = self.net(x.flip(-1))
            perm = self._mirror
            out["slots"] = out["slots"].log_softmax(-1) + flip["slots"][:, perm].log_softmax(-1)
            for k in ("background", "style"):
                out[k] = out[k].log_softmax(-1) + flip[k].log_softmax(-1)
            out["quality"] = torch.sigmoid(self.critic(x))
            yield out

    def run(self, images: np.ndarray, batch_size: int = 256) -> Reading:
        layouts, quality, feats = [], [], []
        for out in self._forward(images, batch_size):
            slots = out["slots"].argmax(-1).numpy()
            bg = out["background"].argmax(-1).numpy()
            st = out["style"].argmax(-1).numpy()
            layouts += [self.codec.decode(b, s, sl) for b, s, sl in zip(bg, st, slots)]
            quality.append(out["quality"].numpy())
            feats.append(out["feature"].numpy())
        if not layouts:
            return Reading([], np.zeros(0, np.float32), np.zeros((0, self.net.feature_dim), np.float32))
        return Reading(layouts, np.concatenate(quality), np.concatenate(feats))

    def read(self, images: np.ndarray) -> list[tuple]:
        return self.run(images).layouts

    def pq_from_quality(self, quality: np.ndarray) -> np.ndarray:
        """Naturalness score 0..10 from the critic's output q in [0, 1]."""
        return 10.0 * np.clip(np.asarray(quality, np.float64) / self.q_clean, 0.0, 1.0)

    def pq(self, images: np.ndarray) -> np.ndarray:
        return self.pq_from_quality(self.run(images).quality)

    @torch.inference_mode()
    def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The FID feature (pooled last backbone stage) only: same numbers as ``run(images).features``."""
        images = check_images(images)
        out = [self.net.backbone(normalize_input(judge_input(to_float(images[i: i + batch_size]))))[-1]
               .mean(dim=(2, 3)).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.net.feature_dim), np.float32)

    @torch.inference_mode()
    def lpips(self, a: np.ndarray, b: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """LPIPS-style distance per pair: mean over the backbone's three stages of the spatially averaged squared
        distance between channel-normalized features (0 = identical features)."""
        a, b = check_images(a), check_images(b, n=len(a))
        out = []
        for i in range(0, len(a), batch_size):
            xa = judge_input(to_float(a[i: i + batch_size]))
            xb = judge_input(to_float(b[i: i + batch_size]))
            fa = self.net.backbone(normalize_input(xa))
            fb = self.net.backbone(normalize_input(xb))
            d = sum(_stage_distance(u, v) for u, v in zip(fa, fb)) / len(fa)
            out.append(d.numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def _stage_distance(u: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    u = u / (u.norm(dim=1, keepdim=True) + eps)
    v = v / (v.norm(dim=1, keepdim=True) + eps)
    return (u - v).pow(2).sum(1).mean(dim=(1, 2))


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> Judge:
    paths = [Path(folder) / JUDGE_FILE, Path(folder) / CRITIC_FILE]
    for p in paths:
        if not p.is_file():
            raise UserError(f"judge weights missing at {p}; retrain with: python scripts/train_eval_nets.py")
    net, meta = judge_from_file(paths[0])
    critic, cmeta = critic_from_file(paths[1])
    return Judge(net, meta, critic, cmeta)


def load_judge(folder: Path | str | None = None) -> Judge:
    """The judge and critic from ``folder`` (default: the shipped ``danceopd/assets/eval``); cached per process."""
    j = _load(str(Path(folder) if folder is not None else ASSET_DIR))
    if folder is None and j.version != JUDGE_VERSION:
        raise UserError(f"shipped judge is {j.version!r} but the code expects {JUDGE_VERSION!r}; retrain it")
    return j
