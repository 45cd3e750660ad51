"""Exact resume after SIGKILL (real subprocesses), atomic checkpoints, pruning, output safety, NaN guard."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tinycfg import tiny_sft_yaml

from danceopd.train.checkpoint import latest_good, list_checkpoints, prune, verify

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(cfg, out, *extra, kill=None, check=True):
    env = dict(ENV)
    if kill:
        env["DANCEOPD_KILL_AT"] = kill
    cmd = [sys.executable, "-m", "danceopd.cli", "train", "--config", str(cfg), "--out", str(out), *extra]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and kill is None:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    cfg = tiny_sft_yaml(d / "cfg.yaml")
    _train(cfg, d / "run")
    return cfg, d / "run"


def _same_run(a: Path, b: Path):
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:  # byte for byte (the file header differs only by wall time)
        assert ta[k].numpy().tobytes() == tb[k].numpy().tobytes(), k
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()


# step:3 and ckpt:4 (mid-run, mid-checkpoint-write) in the default tier; the first and last steps in the slow tier
@pytest.mark.parametrize("kill", [pytest.param("step:1", marks=pytest.mark.slow), "step:3", "ckpt:4",
                                  pytest.param("step:5", marks=pytest.mark.slow)])
def test_sigkill_then_resume_is_bit_identical(reference, tmp_path, kill):
    cfg, ref = reference
    out = tmp_path / "run"
    p = _train(cfg, out, kill=kill)
    assert p.returncode == -9, p.stderr[-1000:]  # really killed
    assert not (out / "model.safetensors").exists()
    if kill == "ckpt:4":
        assert (out / ".checkpoint-00000004.tmp").exists()  # a half-written checkpoint was left behind
        assert latest_good(out).name == "checkpoint-00000002"
    _train(cfg, out, "--resume")
    _same_run(ref, out)


def test_corrupted_latest_checkpoint_falls_back(reference, tmp_path):
    cfg, ref = reference
    out = tmp_path / "run"
    _train(cfg, out, kill="step:5")
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == [2, 4]
    newest = ckpts[-1][1] / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert "checksum" in verify(ckpts[-1][1])
    with pytest.warns(UserWarning, match="skipping checkpoint .*checkpoint-00000004"):
        assert latest_good(out) == ckpts[0][1]
    _train(cfg, out, "--resume")  # resumes from step 2, still bit-identical
    _same_run(ref, out)


def test_truncated_checkpoint_detected(reference, tmp_path):
    _, ref = reference
    d = tmp_path / "r"
    shutil.copytree(ref, d)
    last = list_checkpoints(d)[-1][1]
    f = last / "optimizer.bin"
    f.write_bytes(f.read_bytes()[:100])
    assert "truncated" in verify(last)


def test_pruning_keeps_newest_good(reference, tmp_path):
    _, ref = reference
    d = tmp_path / "r"
    shutil.copytree(ref, d)
    assert [s for s, _ in list_checkpoints(d)] == [2, 4, 6]
    # break the newest: pruning to 1 must keep the newest *good* one (4), never leave zero good checkpoints
    (list_checkpoints(d)[-1][1] / "manifest.json").unlink()
    with pytest.warns(UserWarning):
        prune(d, 1)
    assert [s for s, _ in list_checkpoints(d)] == [4]  # oldest and broken removed, newest good kept
    assert latest_good(d).name.endswith("00000004")


def test_refuses_existing_run_dir_and_keeps_it(reference, tmp_path):
    cfg, ref = reference
    d = tmp_path / "r"
    shutil.copytree(ref, d)
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    p = _train(cfg, d, check=False)
    assert p.returncode == 2 and "exists and is not empty" in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_resume_with_changed_config_refused(reference, tmp_path):
    cfg, ref = reference
    d = tmp_path / "r"
    shutil.copytree(ref, d)
    p = _train(cfg, d, "--resume", "--set", "optim.lr=0.5", check=False)
    assert p.returncode == 2 and "config differs" in p.stderr and "optim.lr" in p.stderr


def _poison(monkeypatch, bad_calls):
    """Make the x_t of the given micro-steps (1-based) NaN, as a diverging model would."""
    import danceopd.methods.sft as sft  # the SFT objective the SFT trainer calls

    real, n = sft.interpolate, {"calls": 0}

    def interp(x_0, noise, t):
        n["calls"] += 1
        x = real(x_0, noise, t)
        return x * float("nan") if n["calls"] in bad_calls else x

    monkeypatch.setattr(sft, "interpolate", interp)


def test_nan_guard_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    from danceopd.config import load_config
    from danceopd.train.common import NonFiniteError
    from danceopd.train.sft import SFTConfig, train_sft

    cfg = tiny_sft_yaml(tmp_path / "cfg.yaml")
    _poison(monkeypatch, {5})
    c = load_config(SFTConfig, cfg)
    with pytest.raises(NonFiniteError, match=r"non-finite loss .* at step 5, route 't2i', method 'sft'"):
        train_sft(c, tmp_path / "run", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]
    assert verify(latest_good(tmp_path / "run")) is None
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_nan_guard_skip_policy(tmp_path, monkeypatch):
    from danceopd.config import load_config
    from danceopd.train.common import NonFiniteError
    from danceopd.train.sft import SFTConfig, train_sft

    cfg = tiny_sft_yaml(tmp_path / "cfg.yaml", **{"train.nan_policy": "skip", "train.max_skipped_steps": 1})
    _poison(monkeypatch, {3})
    train_sft(load_config(SFTConfig, cfg), tmp_path / "a", progress=False)  # one bad step skipped
    assert (tmp_path / "a" / "model.safetensors").exists()
    _poison(monkeypatch, {2, 4})
    with pytest.raises(NonFiniteError):
        train_sft(load_config(SFTConfig, cfg), tmp_path / "b", progress=False)  # over the limit


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/danceopd_pwned_marker",))


def test_checkpoint_pickle_is_never_executed(reference, tmp_path):
    """A checkpoint whose optimizer file carries a code-executing pickle (and a manifest that matches it) must fail
    to load without running the code: optimizer/scheduler states load with weights_only=True."""
    import hashlib
    import json
    import pickle

    from accelerate import Accelerator

    from danceopd.train.checkpoint import load_checkpoint

    _, ref = reference
    d = tmp_path / "r"
    shutil.copytree(ref, d)
    ck = list_checkpoints(d)[-1][1]
    marker = Path("/tmp/danceopd_pwned_marker")
    marker.unlink(missing_ok=True)
    import torch

    torch.save({"state": {}, "param_groups": [], "x": _Evil()}, ck / "optimizer.bin", pickle_module=pickle)
    m = json.loads((ck / "manifest.json").read_text())
    data = (ck / "optimizer.bin").read_bytes()
    m["files"]["optimizer.bin"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(m))
    assert verify(ck) is None
    from danceopd.backends.world_model import WorldNetConfig, WorldUNet

    acc = Accelerator(cpu=True)
    net = WorldUNet(WorldNetConfig(channels=(8, 16), attn_levels=(1,), text_dim=16, text_layers=1, emb_dim=32))
    opt = torch.optim.AdamW(net.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    acc.prepare(net, opt, sched)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_checkpoint(acc, ck)
    assert not marker.exists()


def test_lr_factor_warmup_constant_decay():
    from danceopd.train.sft import OptimSection

    o = OptimSection(lr=1e-3, warmup_steps=4, decay_start=10, final_lr_frac=0.1)
    assert [o.lr_factor(s, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert o.lr_factor(9, 20) == 1.0 and o.lr_factor(10, 20) == 1.0
    assert abs(o.lr_factor(15, 20) - 0.55) < 1e-12 and abs(o.lr_factor(20, 20) - 0.1) < 1e-12
    assert OptimSection(warmup_steps=0).lr_factor(123, 200) == 1.0  # no decay configured: constant


def test_extending_a_run_with_a_decay_tail_equals_one_shot(tmp_path):
    """Train 4 constant-lr steps, then resume to 6 with a decay from step 4: same bytes as the 6-step run."""
    one = tiny_sft_yaml(tmp_path / "one.yaml", **{"optim": {"lr": 0.002, "warmup_steps": 2, "decay_start": 4}})
    _train(one, tmp_path / "one")
    short = tiny_sft_yaml(tmp_path / "short.yaml")
    _train(short, tmp_path / "ext", "--set", "train.steps=4")
    _train(short, tmp_path / "ext", "--resume", "--set", "optim.decay_start=4")
    _same_run(tmp_path / "one", tmp_path / "ext")
