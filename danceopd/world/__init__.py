"""ShapesWorld: a procedurally rendered image world with exact ground truth for T2I prompts and six kinds of edit."""

from .edits import EDIT_CATEGORIES, GLOBAL_EDITS, LOCAL_EDITS, make_edit
from .prompts import T2I_CATEGORIES, check_constraints, make_t2i
from .render import apply_style, coverage, edit_region_mask, render
from .sampler import (
    BUCKETS,
    TASKS,
    Example,
    WorldBatch,
    WorldStream,
    bucket_tasks,
    render_batch,
    sample_example,
)
from .scene import Obj, Scene, sample_scene
from .text import WorldTokenizer
from .vocab import DEFAULT_WORLD, WorldConfig

__all__ = [
    "BUCKETS", "DEFAULT_WORLD", "EDIT_CATEGORIES", "GLOBAL_EDITS", "LOCAL_EDITS", "T2I_CATEGORIES", "TASKS",
    "Example", "Obj", "Scene", "WorldBatch", "WorldConfig", "WorldStream", "WorldTokenizer", "apply_style",
    "bucket_tasks", "check_constraints", "coverage", "edit_region_mask", "make_edit", "make_t2i", "render", "render_batch",
    "sample_example", "sample_scene",
]
