"""Two CPU processes through ``accelerate launch`` (DDP over gloo) on the tiny SD3 backend: two steps, one export.
(With accelerate 1.15, ``--cpu --num_processes 2`` starts a single process; ``--multi_gpu`` with no visible GPU
starts two CPU processes.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from tinypipes import distill_yaml  # noqa: E402


def test_accelerate_launch_two_processes(pipes, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        accelerate = shutil.which("accelerate")
    if not accelerate:
        pytest.skip("accelerate CLI not found")
    cfg = distill_yaml(tmp_path / "cfg.yaml", "sd3", pipes["sd3"], "danceopd")
    out = tmp_path / "run"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "danceopd.cli", "distill", "--config", str(cfg),
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    info = json.loads((out / "danceopd_model.json").read_text())
    assert info["lora_check"]["ok"] and (out / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((out / "final.json").read_text())["steps"] == 2
    ckpt = out / "checkpoints" / "checkpoint-00000002"
    assert json.loads((ckpt / "manifest.json").read_text())["num_processes"] == 2
    assert (ckpt / "trainer_state_1.json").is_file()
