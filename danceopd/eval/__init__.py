"""Offline evaluation suite: GEdit-style edit scores, GenEval-style T2I accuracy, FID / CLIP score / LPIPS on
ShapesWorld, judged by small frozen networks shipped with the package (see docs/evaluation.md)."""

from .nets import CLIP_VERSION, JUDGE_VERSION

__all__ = ["CLIP_VERSION", "JUDGE_VERSION"]
