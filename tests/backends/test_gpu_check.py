"""``scripts/gpu_check.py`` at tiny scale on the CPU (slow tier): every stage passes (build, distill with a T2I and
an edit route in bf16, checkpoint, resume, sample / edit through --pipeline --lora, the throughput table), the
summary table is printed and the exit code is 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_tiny(tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--scale", "tiny", "--device", "cpu",
                        "--out", str(out), "--batches", "1,8,16"], env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    res = json.loads((out / "gpu_check.json").read_text())
    stages = [r["stage"] for r in res["rows"]]
    for s in ("build", "distill", "checkpoint", "resume", "sample", "edit", "step: DanceOPD", "step: naive"):
        assert s in stages, s
    assert all(r["status"] == "ok" for r in res["rows"]), res["table"]
    steps = [r for r in res["rows"] if r["stage"].startswith("step:")]
    assert len(steps) == 12 and all(r["samples_per_s"] > 0 for r in steps)
    assert res["table"] in p.stdout and "| stage | setting | status |" in p.stdout
