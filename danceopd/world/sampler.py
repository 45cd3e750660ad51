"""Route buckets and the fast streaming sampler (renders straight to in-memory arrays; no disk)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .edits import EDIT_CATEGORIES, GLOBAL_EDITS, LOCAL_EDITS, make_edit
from .prompts import T2I_CATEGORIES, make_t2i
from .render import render
from .scene import Scene
from .vocab import WorldConfig

BUCKETS: dict[str, tuple[str, ...]] = {
    "t2i": T2I_CATEGORIES,
    "local_edit": LOCAL_EDITS,
    "global_edit": GLOBAL_EDITS,
    "edit": EDIT_CATEGORIES,
}
TASKS = ("t2i", "local_edit", "global_edit")


def task_of(raw_task: str) -> str:
    if raw_task in T2I_CATEGORIES:
        return "t2i"
    if raw_task in LOCAL_EDITS:
        return "local_edit"
    if raw_task in GLOBAL_EDITS:
        return "global_edit"
    raise ValueError(f"unknown raw task {raw_task!r}")


def bucket_tasks(bucket: str) -> tuple[str, ...]:
    """The CSV ``task`` values that belong to a route bucket."""
    if bucket not in BUCKETS:
        raise ValueError(f"unknown bucket {bucket!r}; expected one of {tuple(BUCKETS)}")
    return ("local_edit", "global_edit") if bucket == "edit" else (bucket,)


@dataclass
class Example:
    """One world sample. T2I: ``source`` is None and ``constraints`` set; edits: ``source`` and ``edit`` set."""

    task: str
    raw_task: str
    prompt: str
    target: Scene
    source: Scene | None = None
    constraints: dict | None = None
    edit: dict | None = None

    def caption_dict(self) -> dict:
        d = {"raw_task": self.raw_task, "target_scene": self.target.to_dict()}
        if self.source is not None:
            d["source_scene"] = self.source.to_dict()
        if self.constraints is not None:
            d["constraints"] = self.constraints
        if self.edit is not None:
            d["edit"] = self.edit
        return d

    def caption_json(self) -> str:
        return json.dumps(self.caption_dict(), sort_keys=True)

    @staticmethod
    def from_caption(task: str, prompt: str, caption: dict) -> Example:
        return Example(
            task=task,
            raw_task=caption["raw_task"],
            prompt=prompt,
            target=Scene.from_dict(caption["target_scene"]),
            source=Scene.from_dict(caption["source_scene"]) if "source_scene" in caption else None,
            constraints=caption.get("constraints"),
            edit=caption.get("edit"),
        )


def sample_example(rng: np.random.Generator, cfg: WorldConfig, bucket: str, raw_task: str | None = None) -> Example:
    cats = BUCKETS[bucket] if bucket in BUCKETS else None
    if cats is None:
        raise ValueError(f"unknown bucket {bucket!r}; expected one of {tuple(BUCKETS)}")
    cat = raw_task or cats[int(rng.integers(len(cats)))]
    if cat in T2I_CATEGORIES:
        text, cons, scene = make_t2i(rng, cfg, cat)
        return Example("t2i", cat, text, scene, constraints=cons)
    text, src, tgt, info = make_edit(rng, cfg, cat)
    return Example(task_of(cat), cat, text, tgt, source=src, edit=info)


@dataclass
class WorldBatch:
    """``target``/``source``: uint8 [B, H, W, 3] (source is None for T2I-only batches; a T2I row in a mixed batch
    has ``has_source[i] = False`` and a zero source). ``prompts``: B strings."""

    target: np.ndarray
    source: np.ndarray | None
    has_source: np.ndarray
    prompts: list[str]
    examples: list[Example]


def category_probs(bucket: str, weights: dict[str, float]) -> np.ndarray:
    """Per-category probabilities of ``bucket`` from relative ``weights`` (unnamed categories weigh 1)."""
    cats = BUCKETS.get(bucket)
    if cats is None:
        raise ValueError(f"unknown bucket {bucket!r}; expected one of {tuple(BUCKETS)}")
    for k, v in weights.items():
        if k not in cats:
            raise ValueError(f"category weight {k!r} is not a category of bucket {bucket!r}; expected one of {cats}")
        if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"category weight {k!r} must be a finite number >= 0, got {v!r}")
    w = np.array([float(weights.get(c, 1.0)) for c in cats])
    if w.sum() <= 0:
        raise ValueError(f"category weights of bucket {bucket!r} are all zero")
    return w / w.sum()


class WorldStream:
    """Deterministic infinite stream of examples of one bucket. ``state_dict`` captures the RNG exactly."""

    def __init__(self, cfg: WorldConfig, bucket: str, seed: int, resolution: int | None = None,
                 category_weights: dict[str, float] | None = None):
        bucket_tasks(bucket)
        self.cfg, self.bucket, self.seed = cfg, bucket, seed
        self.resolution = resolution or cfg.resolution
        self.rng = np.random.default_rng(seed)
        # None: categories uniform (one rng.integers draw, the stream every shipped teacher was trained on)
        self.p = category_probs(bucket, category_weights) if category_weights else None

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state, "bucket": self.bucket, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def _category(self) -> str | None:
        """The weighted category draw; None lets ``sample_example`` draw it uniformly."""
        return None if self.p is None else BUCKETS[self.bucket][int(self.rng.choice(len(self.p), p=self.p))]

    def examples(self, n: int) -> list[Example]:
        return [sample_example(self.rng, self.cfg, self.bucket, raw_task=self._category()) for _ in range(n)]

    def batch(self, n: int) -> WorldBatch:
        return render_batch(self.examples(n), self.cfg, self.resolution)


def render_batch(examples: list[Example], cfg: WorldConfig, resolution: int | None = None) -> WorldBatch:
    res = resolution or cfg.resolution
    tgt = np.stack([render(e.target, cfg, res) for e in examples])
    has_src = np.array([e.source is not None for e in examples])
    src = None
    if has_src.any():
        src = np.zeros_like(tgt)
        for i, e in enumerate(examples):
            if e.source is not None:
                src[i] = render(e.source, cfg, res)
    return WorldBatch(tgt, src, has_src, [e.prompt for e in examples], examples)
