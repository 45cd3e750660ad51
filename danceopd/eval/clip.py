"""The shipped world CLIP model: cosine similarity of an image and a text (for the CLIP-score column)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..world.text import WorldTokenizer
from .imageops import check_images, judge_input, to_float
from .nets import ASSET_DIR, CLIP_FILE, CLIP_VERSION, WorldClip, clip_from_file


class ClipScorer:
    def __init__(self, net: WorldClip, meta: dict):
        self.net = net.eval().requires_grad_(False)
        self.meta = meta
        self.version = meta.get("version", "unversioned")
        self.tokenizer = WorldTokenizer(words=meta["words"], max_len=meta["max_len"])

    @torch.inference_mode()
    def image_embeddings(self, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        images = check_images(images)
        return torch.cat([self.net.encode_image(judge_input(to_float(images[i: i + batch_size])))
                          for i in range(0, len(images), batch_size)])

    @torch.inference_mode()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        return self.net.encode_text(self.tokenizer.encode(list(texts)))

    def cosine(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """cos(image_i, text_i) for each pair."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if len(texts) == 0:
            return np.zeros(0)
        return (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1).double().numpy()


@functools.lru_cache(maxsize=2)
def _load(path: str) -> ClipScorer:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"CLIP weights missing at {p}; retrain with: python scripts/train_eval_nets.py --net clip")
    net, meta = clip_from_file(p)
    return ClipScorer(net, meta)


def load_clip(folder: Path | str | None = None) -> ClipScorer:
    c = _load(str(Path(folder or ASSET_DIR) / CLIP_FILE))
    if folder is None and c.version != CLIP_VERSION:
        raise UserError(f"shipped CLIP model is {c.version!r} but the code expects {CLIP_VERSION!r}; retrain it")
    return c
