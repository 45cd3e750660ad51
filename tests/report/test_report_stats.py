"""Paired bootstrap over seeds and items (danceopd.report.stats)."""

import numpy as np
import pytest

from danceopd.report.plateau import overall_quality
from danceopd.report.stats import overall_from_items, paired_bootstrap

T2I = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
EDIT = ["subject_add", "subject_remove", "subject_replace", "color_alter", "background_change", "style_change"]


def items(rng, shift=0.0, n=30):
    return {"geneval": {c: list(np.clip(rng.random(n) + shift / 10, 0, 1)) for c in T2I},
            "gedit_o": {c: list(np.clip(rng.normal(6 + shift, 2, n), 0, 10)) for c in EDIT}}


def test_overall_from_items_matches_the_aggregate_formula():
    it = items(np.random.default_rng(0))
    sc = {"geneval": {"overall": np.mean([np.mean(v) for v in it["geneval"].values()])},
          "gedit": {"avg": {"o": np.mean([np.mean(v) for v in it["gedit_o"].values()])}}}
    for setting in "AB":
        assert overall_from_items(it, setting) == pytest.approx(overall_quality(sc, setting))


def test_bootstrap_calls_a_tie_a_win_and_a_loss():
    rng = np.random.default_rng(1)
    base = {s: items(rng) for s in range(5)}
    same = {s: {k: dict(v) for k, v in it.items()} for s, it in base.items()}
    tie = paired_bootstrap(same, base, "A", n_boot=300)
    assert tie["diff"] == 0 and tie["verdict"] == "tie" and tie["lo"] <= 0 <= tie["hi"]
    better = {s: {"geneval": it["geneval"], "gedit_o": {c: [x + 1.5 for x in v] for c, v in it["gedit_o"].items()}}
              for s, it in base.items()}
    win = paired_bootstrap(better, base, "B", n_boot=300)
    assert win["diff"] == pytest.approx(1.5) and win["verdict"] == "win" and win["lo"] > 0
    assert paired_bootstrap(base, better, "B", n_boot=300)["verdict"] == "loss"
    noisy = {s: items(np.random.default_rng(100 + s)) for s in range(5)}   # unrelated noise, same distribution
    assert paired_bootstrap(noisy, base, "A", n_boot=300)["verdict"] == "tie"
    assert paired_bootstrap(base, {}, "A")["verdict"] is None


def test_bootstrap_refuses_unpaired_items():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap({0: items(rng, n=10)}, {0: items(rng, n=12)}, "B", n_boot=5)
