"""Training data sources with exact, resumable state: the ShapesWorld stream or a validated dataset CSV."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backends.world import images_to_tensor
from ..world import DEFAULT_WORLD, WorldStream
from ..world.dataset import load_csv
from ..world.sampler import bucket_tasks


@dataclass
class Batch:
    """x_0 [B,3,H,W] in [-1,1]; source [B,3,H,W] or None; has_source [B] bool; prompts: B strings."""

    x_0: torch.Tensor
    source: torch.Tensor | None
    has_source: torch.Tensor
    prompts: list[str]
    raw_tasks: list[str]


class WorldData:
    def __init__(self, bucket: str, seed: int, resolution: int = 32, category_weights: dict | None = None):
        self.stream = WorldStream(DEFAULT_WORLD.with_resolution(resolution), bucket, seed,
                                  category_weights=category_weights)

    def next(self, n: int) -> Batch:
        b = self.stream.batch(n)
        src = images_to_tensor(b.source) if b.source is not None else None
        return Batch(images_to_tensor(b.target), src, torch.from_numpy(b.has_source), b.prompts,
                     [e.raw_task for e in b.examples])

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, s):
        self.stream.load_state_dict(s)


class CsvData:
    """All rows of ``bucket`` held in memory (validated up front by ``load_csv``), drawn with replacement.
    ``resolution`` None: any size, but all images equal."""

    def __init__(self, csv_path: str, bucket: str, seed: int, resolution: int | None = 32):
        ds = load_csv(csv_path, buckets=[bucket], resolution=resolution)
        rows = ds.bucket(bucket)
        self.prompts = [r.prompt for r in rows]
        self.raw = [r.raw_task for r in rows]
        imgs = [ds.load(r) for r in rows]
        self.target = np.stack([t for _, t in imgs])
        self.has_source = np.array([s is not None for s, _ in imgs])
        self.source = np.stack([s if s is not None else np.zeros_like(t) for s, t in imgs])
        self.rng = np.random.default_rng(seed)
        self.tasks = bucket_tasks(bucket)

    def next(self, n: int) -> Batch:
        idx = self.rng.integers(len(self.prompts), size=n)
        hs = self.has_source[idx]
        src = images_to_tensor(self.source[idx]) if hs.any() else None
        return Batch(images_to_tensor(self.target[idx]), src, torch.from_numpy(hs),
                     [self.prompts[i] for i in idx], [self.raw[i] for i in idx])

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, s):
        self.rng.bit_generator.state = s["bit_generator"]


def make_data(bucket: str, csv: str | None, seed: int, resolution: int | None, category_weights: dict | None = None):
    """``category_weights`` (relative, per raw task of ``bucket``; validated with the config) shape the world stream."""
    return CsvData(csv, bucket, seed, resolution) if csv else WorldData(bucket, seed, resolution or 32, category_weights)
