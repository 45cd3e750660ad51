"""The reading's cost-order line compares seconds per step only between cells timed on the same device."""

from danceopd.report.plan import DENSE_COST
from danceopd.report.report import cost_order_lines


def _rec(method, sec, device):
    return {"tags": {"setting": "A", "method": method, "seed": 0}, "sec_per_step": sec, "device": device}


def test_cost_order_on_one_device_uses_the_records():
    recs = {m: _rec(m, s, "cpu") for m, s in (("flowopd", 3.2), ("diffusionopd", 11.8), ("danceopd", 0.7))}
    (line,) = cost_order_lines(recs)
    assert "all on cpu" in line and "3.20 s" in line and "NOT the order of" in line
    recs["flowopd"]["sec_per_step"] = 20.0
    assert "same order as" in cost_order_lines(recs)[0]
    # a run at matched samples (another sitting) does not stand in for the row timed beside DanceOPD
    recs["late"] = {**_rec("diffusionopd", 0.1, "cpu"), "tags": {**_rec("diffusionopd", 0, "cpu")["tags"],
                                                                 "matched": "samples"}}
    assert "DiffusionOPD 11.80 s" in cost_order_lines(recs)[0]


def test_cost_order_across_devices_uses_the_same_machine_ratios():
    recs = {"f": _rec("flowopd", 0.31, "cuda (NVIDIA H200)"), "d": _rec("diffusionopd", 0.30, "cuda (NVIDIA H200)"),
            "o": _rec("danceopd", 0.66, "cpu")}
    (line,) = cost_order_lines(recs)
    assert "not compared" in line and "0.31" not in line and "danceopd on cpu" in line
    assert f"{DENSE_COST['diffusionopd']:g}x" in line


def test_no_line_without_all_three():
    assert cost_order_lines({"o": _rec("danceopd", 0.66, "cpu")}) == []


def test_ablation_tables_order_numbers_by_value_and_mark_gpu_timings(tmp_path):
    from danceopd.report.report import ablation_tables

    def rec(v, device="cpu"):
        sc = {"gedit": {"avg": {"o": 5.0}}, "geneval": {"overall": 0.5}}
        return {"status": "done", "tags": {"ablation": "k", "value": v}, "scores": sc, "sec_per_step": 0.4,
                "device": device}

    md = ablation_tables({str(v): rec(v, "cuda (NVIDIA H200)" if v == 16 else "cpu") for v in (16, 2, 1, 4)},
                         tmp_path)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split(" | ")[0] for ln in rows] == ["| 1", "| 2", "| 4", "| 16"]
    assert rows[-1].endswith("0.40 (GPU) |") and rows[0].endswith("0.40 |")
    assert "|  |" not in md                                  # no empty column outside the CFG table


def test_dense_baselines_get_a_row_at_matched_wall_time_and_one_at_matched_samples():
    from danceopd.report.report import table2

    def rec(method, steps, **tags):
        sc = {"gedit": {"avg": {"o": 4.0 + steps / 1000}}, "geneval": {"overall": 0.5}}
        return {"status": "done", "steps": steps, "sec_per_step": 0.3, "scores": sc,
                "tags": {"setting": "A", "method": method, "seed": 0, **tags}}

    recs = {"a": rec("diffusionopd", 144), "b": rec("diffusionopd", 2500, matched="samples"),
            "c": rec("danceopd", 2500)}
    md, overall = table2(recs, "A")
    wall = next(ln for ln in md.splitlines() if ln.startswith("| DiffusionOPD (DanceOPD's wall time)"))
    samples = next(ln for ln in md.splitlines() if ln.startswith("| DiffusionOPD (matched samples)"))
    assert "| 144 |" in wall and "| 2500 |" in samples and "4.14" in wall and "6.50" in samples
    assert set(overall) == {"diffusionopd", "diffusionopd/samples", "danceopd"}


def test_the_shipped_note_gives_each_setting_its_own_steps_and_the_live_run_its_own_student():
    from danceopd.report.report import shipped_note

    def rec(setting, method, steps, o):
        return {"status": "done", "scores": {"n": 16, "gedit": {"avg": {"o": o}}, "geneval": {"overall": 0.8}},
                "tags": {"setting": setting, "method": method, "seed": 0, "shipped": steps}}

    recs = {"a": rec("A", "danceopd", 3000, 7.0), "b": rec("B", "danceopd", 6000, 9.0),
            "live": {"status": "done", "steps": 60, "sec_per_step": 0.9, "model": "/x/run/model.safetensors",
                     "scores": {"gedit": {"avg": {"o": 2.0}}, "geneval": {"overall": 0.7}},
                     "tags": {"setting": "A", "method": "danceopd", "seed": 0, "live": 60}}}
    note = shipped_note(recs)
    assert "steps: A 3000, B 6000" in note
    assert "the shipped DanceOPD student reached 7.50 after 3000 steps" in note


def test_a_dense_baseline_above_danceopd_is_called_a_disagreement_with_the_paper():
    from danceopd.report.report import dense_lines

    def rec(method, seed, o, steps=2500, sec=0.6, **tags):
        return {"status": "done", "steps": steps, "sec_per_step": sec, "device": "cpu",
                "scores": {"gedit": {"avg": {"o": o}}, "geneval": {"overall": 0.8}},
                "tags": {"setting": "A", "method": method, "seed": seed, **tags}}

    recs = {f"d{i}": rec("danceopd", i, o) for i, o in enumerate((7.0, 7.4, 7.2))}
    recs["w"] = rec("diffusionopd", 0, 5.0, steps=600, sec=2.4)
    recs["s"] = rec("diffusionopd", 0, 9.0, sec=2.4, matched="samples")
    wall, samples = dense_lines(recs)
    assert "diffusionopd at matched wall time (600 steps, 2.40 s/step = 4.0x DanceOPD's)" in wall
    assert "overall 6.50 vs DanceOPD 7.50 on the same seed 0" in wall and "below DanceOPD" in wall
    assert "diffusionopd at matched samples (2,500 steps" in samples and "overall 8.50" in samples
    assert "DanceOPD 7.60 ± 0.10 over 3 seeds" in samples and "does NOT reproduce" in samples
    recs["s"]["device"] = "cuda (NVIDIA H200)"   # a GPU timing is not put against a CPU one
    assert "s/step" not in dense_lines(recs)[1]
    assert dense_lines({"w": recs["w"]}) == []   # nothing to compare without DanceOPD
