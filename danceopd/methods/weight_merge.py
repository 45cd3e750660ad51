"""Weight merging: static interpolation of teacher weights, no training (coefficients: ``merge:`` section, which
also sets the merged init of the other methods)."""

from __future__ import annotations

from .base import Method, NoConfig


class WeightMerge(Method[NoConfig]):
    name = "weight_merge"
    trains = False
    student_init = "merged"
    student_text_scale = 3.0

    def loss(self, ctx, route, batch):  # pragma: no cover - never trained
        raise RuntimeError("weight_merge does not train")
