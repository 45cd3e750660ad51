"""Fast tier: every method x setting trains 2 steps from tiny teachers through the CLI (in-process), bad configs
fail with one line before any model loads, LoRA and merged-init students, and the route log."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tinycfg import make_tiny_teachers, tiny_distill_yaml

from danceopd.cli import main

METHODS = ["danceopd", "joint_sft", "offpolicy", "soft_mix", "weight_merge", "diffusionopd", "flowopd"]
ROUTE_NAMES = {"A": ("t2i", "edit"), "B": ("local", "global")}
GROUP = {"joint_sft", "diffusionopd"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return make_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def _distill(cfg, out, *extra) -> int:
    return main(["distill", "--config", str(cfg), "--out", str(out), *map(str, extra)])


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("setting", ["A", "B"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_two_steps(teachers, tmp_path, method, setting):
    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, setting, method)
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    assert (out / "model.safetensors").is_file()
    final = json.loads((out / "final.json").read_text())
    if method == "weight_merge":
        assert final["steps"] == 0 and not (out / "metrics.jsonl").exists()
        return
    assert final["steps"] == 2
    recs = _metrics(out)
    assert [r["step"] for r in recs] == [1, 2]
    names = ROUTE_NAMES[setting]
    for r in recs:
        assert r["loss"] is not None  # finite (non-finite values are logged as null)
        if method in GROUP:  # every route in every step
            assert r["route"] == "+".join(names)
            assert all(f"loss/{n}" in r for n in names)
        else:                # hard routing: exactly one route per step
            assert r["route"] in names
            assert [k for k in r if k.startswith("loss/")] == [f"loss/{r['route']}"]
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert weights["conv_in.weight"].shape[1] == 9  # widened for the edit routes (3 + 2 coord + 4 source)


def test_weight_merge_exports_coefficient_weighted_teachers(teachers, tmp_path):
    from danceopd.backends.world import load_world_model
    from danceopd.backends.world_model import widen_for_editing

    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "weight_merge",
                            **{"merge.coefficients": [0.25, 0.75]})
    assert _distill(cfg, tmp_path / "run") == 0
    t2i = widen_for_editing(load_world_model(teachers["t2i"])[0]).state_dict()
    edit = load_world_model(teachers["edit"])[0].state_dict()
    merged = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert merged.keys() == t2i.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], 0.25 * t2i[k] + 0.75 * edit[k])


@pytest.mark.parametrize("case,needle", [
    ("unknown_key", "unknown key 'bogus'"),
    ("unknown_method", "method must be one of"),
    ("missing_teacher", "not found"),
    ("flowopd_group", "multiple of flowopd.group_size"),
])
def test_bad_config_exits_2_with_one_line_before_loading(teachers, tmp_path, capsys, monkeypatch, case, needle):
    import danceopd.backends.world_specs as world_specs

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(world_specs, "load_world_model", no_load)
    over = {
        "unknown_key": {"train.bogus": 1},
        "unknown_method": {},
        "missing_teacher": {"routes": [{"name": "t2i", "bucket": "t2i", "teacher": str(tmp_path / "nope.safetensors")}]},
        "flowopd_group": {"flowopd.group_size": 3},
    }[case]
    method = {"unknown_method": "dance_opd", "flowopd_group": "flowopd"}.get(case, "danceopd")
    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", method, **over)
    out = tmp_path / "run"
    capsys.readouterr()
    assert _distill(cfg, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written either


def test_lora_student_writes_adapters_and_keeps_base_frozen(teachers, tmp_path):
    from danceopd.backends.world import load_world_model
    from danceopd.backends.world_model import widen_for_editing

    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "danceopd",
                            **{"student.lora": {"enabled": True, "rank": 2, "alpha": 2.0}, "train.lr": 0.01})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    lora = load_file(str(out / "lora.safetensors"))
    assert lora and all("lora_" in k for k in lora)
    model = load_file(str(out / "model.safetensors"))
    init = widen_for_editing(load_world_model(teachers["t2i"])[0]).state_dict()
    assert model.keys() == init.keys()  # a plain model with the adapters merged in
    # convolutions are not LoRA targets: untouched; the adapted linear layers moved
    assert torch.equal(model["conv_in.weight"], init["conv_in.weight"])
    assert torch.equal(model["conv_out.weight"], init["conv_out.weight"])
    film = [k for k in model if k.endswith("film.weight")]
    assert film and any(not torch.equal(model[k], init[k]) for k in film)


def test_merged_student_init(teachers, tmp_path):
    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "B", "danceopd", **{"student.init": "merged"})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    assert (out / "model.safetensors").is_file()
    assert len(_metrics(out)) == 2


def test_route_sequence_logged_every_step(teachers, tmp_path):
    """Hard routing with 6 steps: one route per step, the sequence is the route sampler's own draws."""
    from danceopd.core import Route, RouteSampler

    cfg = tiny_distill_yaml(tmp_path / "cfg.yaml", teachers, "A", "danceopd",
                            **{"train.steps": 6, "train.checkpoint_every": 6, "rollout.steps": 2})
    out = tmp_path / "run"
    assert _distill(cfg, out) == 0
    logged = [r["route"] for r in _metrics(out)]
    sampler = RouteSampler([Route("t2i", "t2i", "t2i"), Route("edit", "edit", "edit")], seed=0, mode="hard")
    assert logged == [r.name for _ in range(6) for r in sampler.sample_routes()]


def _shipped(*names):
    from danceopd.backends.registry import ASSET_DIR

    return all((ASSET_DIR / f"{n}.safetensors").is_file() for n in names)


@pytest.mark.parametrize("setting", ["A", "B"])
@pytest.mark.parametrize("method", METHODS)
def test_shipped_configs_train_from_shipped_teachers(tmp_path, method, setting):
    """The real configs/world/<setting>_<method>.yaml with the shipped teachers (batch, steps and rollout shrunk)."""
    from pathlib import Path

    names = ("t2i", "edit") if setting == "A" else ("local_edit", "global_edit")
    if not _shipped(*names):
        pytest.skip("teachers not shipped")
    cfg = Path(__file__).resolve().parents[2] / "configs" / "world" / f"{setting}_{method}.yaml"
    out = tmp_path / "run"
    small = ["train.steps=1", "train.batch_size=4", "rollout.steps=2", "sampling.steps=2", "train.threads=1",
             "flowopd.group_size=2"]
    assert _distill(cfg, out, *[a for s in small for a in ("--set", s)]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == (0 if method == "weight_merge" else 1)
