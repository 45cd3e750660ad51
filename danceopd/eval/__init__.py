"""Offline evaluation suite: GEdit-style edit scores, GenEval-style T2I accuracy, FID / CLIP score / LPIPS on
ShapesWorld, judged by small frozen networks shipped with the package (see docs/evaluation.md).

    from danceopd.eval import evaluate, resolve_generator
    scores = evaluate(resolve_generator("oracle", 32), suite="all", n=100, seed=0)
"""

from .generators import Generator, resolve_generator
from .judge import load_judge
from .nets import CLIP_VERSION, JUDGE_VERSION
from .suite import DEFAULT_N, SUITES, evaluate, evaluate_with_samples

__all__ = ["CLIP_VERSION", "DEFAULT_N", "JUDGE_VERSION", "SUITES", "Generator", "evaluate", "evaluate_with_samples",
           "load_judge", "resolve_generator"]
