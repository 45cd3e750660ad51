"""End-to-end GPU check of the SD3 path at real scale, fully offline (issue 18).

    python scripts/gpu_check.py [--scale medium|tiny] [--out runs/gpu_check] [--device auto|cuda|cpu]

Builds a random-weight SD3 pipeline whose transformer has the real SD3.5-Medium shape (``--scale medium``: 2.24B
parameters, bf16 on disk; tiny text encoders and VAE emitting the real widths) or the tiny test shape
(``--scale tiny``: runs on a CPU in a minute or two), a random SD3 edit teacher (a LoRA plus a widened patch
embedding, as a danceopd run folder) and ShapesWorld dataset CSVs upscaled to ``--resolution`` (medium: 512 px),
then runs, each stage timed:

1. ``danceopd distill``: DanceOPD, a T2I and an edit route, LoRA student, bf16 weights and bf16 autocast,
   gradient checkpointing, ``--steps`` steps with a checkpoint at the last one (checkpoint size vs the
   transformer's reported), export and the LoRA self-check;
2. ``danceopd distill --resume`` to twice the steps;
3. ``danceopd sample --pipeline <base> --lora <run>`` and ``danceopd edit`` (the same loader);
4. a throughput table, in this process: samples/s of one optimizer step of the engine's DanceOPD loss at batch
   1, 8 and 16 (``--batches``), with and without gradient checkpointing, peak GPU memory, against a naive
   one-sample-per-micro-step loop (full rollout with every state kept, separate conditional / unconditional
   teacher passes, gradient accumulation) on the same models. A configuration that runs out of GPU memory is
   reported as OOM (a measurement, not a failure).

Prints one summary table (and writes it with the raw numbers to ``<out>/gpu_check.json``); exits 1 if any stage
failed. Designed to finish in under 8 minutes on one H100 at ``--scale medium``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT_SCALE = 3.0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["medium", "small", "tiny"], default="medium",
                    help="SD3 transformer shape: medium = SD3.5-Medium (2.24B), small (31M), tiny (CPU test)")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="work folder (replaced)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 medium, 64 otherwise)")
    ap.add_argument("--steps", type=int, default=2, help="distill steps before the resume (then twice as many)")
    ap.add_argument("--batch", type=int, default=2, help="distill batch size")
    ap.add_argument("--rollout-steps", type=int, default=4)
    ap.add_argument("--batches", default="1,8,16", help="throughput batch sizes")
    ap.add_argument("--iters", type=int, default=2, help="timed throughput steps per setting (after a warm-up)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--skip-throughput", action="store_true")
    a = ap.parse_args(argv)
    a.resolution = a.resolution or (512 if a.scale == "medium" else 64)
    a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device visible")
    if a.resolution % 16 or a.resolution < 64:
        ap.error("--resolution must be a multiple of 16, >= 64")
    return a


class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, stage, setting, status, seconds=None, sps=None, peak=None, extra=None):
        row = {"stage": stage, "setting": setting, "status": status, "seconds": seconds, "samples_per_s": sps,
               "peak_gib": peak, **(extra or {})}
        self.rows.append(row)
        print(f"[gpu_check] {stage}: {setting}: {status}" + (f" ({seconds:.1f} s)" if seconds else ""), flush=True)
        return row

    @property
    def failed(self) -> bool:
        return any(r["status"].startswith("FAIL") for r in self.rows)


def _cli(args: list[str], env: dict, log: Path) -> float:
    """Run ``danceopd <args>`` in a fresh process (as a user would); raise with its last error line on failure."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        p = subprocess.run([sys.executable, "-m", "danceopd.cli", *map(str, args)], env=env, stdout=f,
                           stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if "Error" in ln or ln.startswith("error")), lines[-1] if lines
                    else "")
        raise RuntimeError(f"exit {p.returncode}: {last.strip()[:300]} (log: {log})")
    return time.perf_counter() - t0


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def build(a, work: Path) -> dict:
    """The pipeline, the edit teacher, and the dataset CSVs at the resolution."""
    from PIL import Image

    from danceopd.testing.tiny_pipelines import build_sd3, sd3_edit_teacher_run
    from danceopd.world import DEFAULT_WORLD
    from danceopd.world.dataset import export

    base = build_sd3(work / "sd3", size=a.scale, dtype=torch.bfloat16,
                     device=a.device if a.scale == "medium" else None)
    if a.device == "cuda":
        torch.cuda.empty_cache()
    edit = sd3_edit_teacher_run(base, work / "sd3_edit_teacher")
    data = {}
    for bucket in ("t2i", "edit"):
        d = export(bucket, 16, 0, work / "data" / bucket, DEFAULT_WORLD.with_resolution(64))
        if a.resolution != 64:
            for img in (d / "images").glob("*.png"):
                Image.open(img).convert("RGB").resize((a.resolution, a.resolution), Image.BICUBIC).save(img)
        data[bucket] = d / "data.csv"
    return {"base": base, "edit": edit, "data": data}


def distill_config(a, work: Path, built: dict) -> Path:
    import yaml

    base = built["base"]
    cfg = {
        "name": "gpu_check", "backend": "sd3", "method": "danceopd", "seed": 0,
        "routes": [{"name": "t2i", "bucket": "t2i", "teacher": f"sd3:{base}", "csv": str(built["data"]["t2i"])},
                   {"name": "edit", "bucket": "edit", "teacher": built["edit"], "csv": str(built["data"]["edit"])}],
        "student": {"init": f"sd3:{base}", "lora": {"enabled": True, "rank": a.lora_rank, "alpha": a.lora_rank}},
        "teacher_guidance": {"text_scale": TEXT_SCALE, "image_scale": 1.0},
        "rollout": {"steps": a.rollout_steps, "shift": 3.0},
        "train": {"steps": a.steps, "batch_size": a.batch, "lr": 1e-4, "warmup_steps": 1, "mixed_precision": "bf16",
                  "log_every": 1, "checkpoint_every": a.steps, "checkpoints_total_limit": 2},
        "sampling": {"steps": 4, "text_scale": 1.0},
        "diffusers": {"resolution": a.resolution, "dtype": "bfloat16", "gradient_checkpointing": True,
                      "max_sequence_length": 77},
    }
    path = work / "distill.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ---- throughput ------------------------------------------------------------------------------------------------
def throughput(a, built: dict, rep: Report):
    from danceopd.backends.diffusers import DiffusersOptions
    from danceopd.backends.registry import get_family
    from danceopd.core import Route, sample_query_indices
    from danceopd.methods import METHODS, MethodConfig, StepContext, TeacherField
    from danceopd.train.data import make_data
    from danceopd.util.lora import LoraConfig

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    fam = get_family("sd3").configure(DiffusersOptions(resolution=a.resolution, dtype="bfloat16",
                                                          max_sequence_length=77))
    base = str(built["base"])
    teacher = fam.load_teacher(f"sd3:{base}", dev)
    student = fam.build_student(f"sd3:{base}", [teacher], needs_edit=True, merge=None, freeze_text=True,
                                lora=LoraConfig(enabled=True, rank=a.lora_rank, alpha=float(a.lora_rank),
                                                targets=LoraConfig().targets))
    params = [p for p in student.net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    cfg = MethodConfig(rollout_steps=a.rollout_steps, rollout_shift=3.0, k=1, bias="low_t")
    ctx = StepContext(student, {"t2i": TeacherField(teacher, TEXT_SCALE)}, cfg, dev)
    route, method = Route("t2i", "t2i", "t2i"), METHODS["danceopd"]()
    data = make_data("t2i", str(built["data"]["t2i"]), 0, a.resolution)
    ts = student.timesteps(a.rollout_steps, 3.0)

    def autocast():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    def finish():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours(batch, n):
        with autocast():
            loss, _ = method.loss(ctx, route, batch)
        loss.backward()
        finish()

    def naive(batch, n):
        for b in range(n):                                         # one sample per micro-step
            prompt = [batch.prompts[b]]
            q = int(sample_query_indices(1, a.rollout_steps, k=1, bias="low_t")[0, 0])
            with torch.no_grad(), autocast():                      # the full rollout, every state kept
                states = [torch.randn(student.latent_shape(1), device=dev)]
                for i in range(a.rollout_steps):
                    v = student.velocity(states[-1], ts[i].expand(1), student.encode(prompt))
                    states.append(states[-1] + (ts[i + 1] - ts[i]) * v)
                x, t = states[q], ts[q].expand(1).to(dev)
                v_c = teacher.velocity(x, t, teacher.encode(prompt))      # separate cond / uncond passes
                v_u = teacher.velocity(x, t, teacher.encode([""]))
                v_t = v_u + TEXT_SCALE * (v_c - v_u)
            with autocast():
                v_s = student.velocity(x, t, student.encode(prompt))
                loss = ((v_s.float() - v_t.float()) ** 2).mean() / n
            loss.backward()                                        # gradient accumulation
        finish()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    results = {}
    for gc in (False, True):
        if gc:
            student.net.enable_gradient_checkpointing()
        else:
            student.net.disable_gradient_checkpointing()
        for name, fn in (("DanceOPD", ours), ("naive", naive)):
            for n in a.batches:
                setting = f"batch {n}, grad ckpt {'on' if gc else 'off'}"
                try:
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    fn(data.next(n), n)                            # warm-up
                    sync()
                    times = []
                    for _ in range(a.iters):
                        batch = data.next(n)
                        t0 = time.perf_counter()
                        fn(batch, n)
                        sync()
                        times.append(time.perf_counter() - t0)
                    sec = statistics.median(times)
                    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                    results[(name, n, gc)] = n / sec
                    rep.add(f"step: {name}", setting, "ok", sec, n / sec, peak)
                except torch.cuda.OutOfMemoryError:
                    opt.zero_grad(set_to_none=True)
                    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
                    rep.add(f"step: {name}", setting, "OOM", None, None, peak)
                except Exception as e:                              # noqa: BLE001 - reported, then exit 1
                    opt.zero_grad(set_to_none=True)
                    traceback.print_exc()
                    rep.add(f"step: {name}", setting, f"FAIL: {type(e).__name__}: {str(e)[:200]}")
    for row in rep.rows:                                            # ours / naive at the same batch and setting
        if row["stage"] == "step: DanceOPD" and row["samples_per_s"]:
            n = int(row["setting"].split(",")[0].split()[1])
            gc = row["setting"].endswith("on")
            naive_sps = results.get(("naive", n, gc))
            row["vs_naive"] = row["samples_per_s"] / naive_sps if naive_sps else None


# ---- main --------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    a = parse_args(argv)
    import diffusers

    from danceopd.testing.tiny_pipelines import SD3_SIZES

    t_all = time.perf_counter()
    work = a.out.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    dev_name = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    rep = Report()
    built, run = None, work / "run"

    t0 = time.perf_counter()
    try:
        built = build(a, work)
        tr_bytes = _dir_bytes(built["base"] / "transformer")
        from diffusers import SD3Transformer2DModel

        with torch.device("meta"):
            n_params = sum(p.numel() for p in SD3Transformer2DModel(patch_size=2, in_channels=16, out_channels=16,
                                                                     **SD3_SIZES[a.scale]).parameters())
        rep.add("build", f"SD3 {a.scale} transformer: {n_params / 1e6:,.1f}M params, {tr_bytes / 2**20:,.1f} MiB "
                "in bf16", "ok", time.perf_counter() - t0)
    except Exception as e:                                          # noqa: BLE001
        traceback.print_exc()
        rep.add("build", a.scale, f"FAIL: {type(e).__name__}: {str(e)[:200]}", time.perf_counter() - t0)

    if built is not None:
        cfg = distill_config(a, work, built)
        try:
            sec = _cli(["distill", "--config", cfg, "--out", run], env, work / "distill.log")
            info = json.loads((run / "danceopd_model.json").read_text(encoding="utf-8"))
            ck = run / "checkpoints" / f"checkpoint-{a.steps:08d}"
            assert json.loads((run / "final.json").read_text())["steps"] == a.steps, "final.json"
            assert info["lora_check"]["ok"] and info["edit"], "LoRA self-check / edit student"
            rep.add("distill", f"{a.steps} steps, batch {a.batch}, T2I + edit routes, {a.resolution} px, bf16, "
                    f"LoRA r{a.lora_rank}, self-check rel. diff {info['lora_check']['relative']:.2g}", "ok", sec)
            ck_bytes = _dir_bytes(ck)
            # the < 5% bar is for the real shape: at tiny / small scale a rank-16 LoRA (float32, two AdamW
            # moments) is not small next to the bf16 transformer
            small = ck_bytes < 0.05 * tr_bytes or a.scale != "medium"
            rep.add("checkpoint", f"{ck_bytes / 2**20:.2f} MiB = {100 * ck_bytes / tr_bytes:.2f}% of the base "
                    "transformer", "ok" if small else "FAIL: checkpoint >= 5% of the base transformer",
                    extra={"bytes": ck_bytes, "transformer_bytes": tr_bytes})
        except Exception as e:                                      # noqa: BLE001
            rep.add("distill", str(cfg), f"FAIL: {type(e).__name__}: {str(e)[:300]}")
        if (run / "final.json").is_file():
            try:
                sec = _cli(["distill", "--config", cfg, "--out", run, "--resume", "--set",
                            f"train.steps={2 * a.steps}"], env, work / "resume.log")
                steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
                assert steps == list(range(1, 2 * a.steps + 1)), f"metrics steps {steps}"
                assert json.loads((run / "danceopd_model.json").read_text())["lora_check"]["ok"]
                rep.add("resume", f"--resume from step {a.steps} to {2 * a.steps}", "ok", sec)
            except Exception as e:                                  # noqa: BLE001
                rep.add("resume", "--resume", f"FAIL: {type(e).__name__}: {str(e)[:300]}")
            src = sorted((built["data"]["edit"].parent / "images").glob("*_source.png"))[0]
            for cmd, extra in (("sample", ["--prompt", "a red circle and a blue star"]),
                               ("edit", ["--image", src, "--instruction", "make the background teal"])):
                png = work / f"{cmd}.png"
                try:
                    sec = _cli([cmd, "--pipeline", built["base"], "--lora", run, *extra, "--out", png, "--steps", 4],
                               env, work / f"{cmd}.log")
                    from PIL import Image

                    size = Image.open(png).size
                    assert size == (a.resolution, a.resolution), f"{png} is {size}"
                    rep.add(cmd, f"danceopd {cmd} --pipeline <base> --lora <run>, 4 steps", "ok", sec)
                except Exception as e:                              # noqa: BLE001
                    rep.add(cmd, "--pipeline --lora", f"FAIL: {type(e).__name__}: {str(e)[:300]}")
        if not a.skip_throughput:
            try:
                throughput(a, built, rep)
            except Exception as e:                                  # noqa: BLE001
                traceback.print_exc()
                rep.add("throughput", "setup", f"FAIL: {type(e).__name__}: {str(e)[:300]}")

    total = time.perf_counter() - t_all
    header = (f"gpu_check: {dev_name} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
              f"SD3 {a.scale} | {a.resolution} px | rollout {a.rollout_steps} steps | total {total / 60:.1f} min")
    lines = [header, "", "| stage | setting | status | s | samples/s | vs naive | peak GiB |",
             "|---|---|---|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    for r in rep.rows:
        lines.append(f"| {r['stage']} | {r['setting']} | {r['status']} | {f(r['seconds'], '.2f')} | "
                     f"{f(r['samples_per_s'], '.2f')} | {f(r.get('vs_naive'), '.2f')} | {f(r['peak_gib'], '.1f')} |")
    table = "\n".join(lines)
    print("\n" + table)
    (work / "gpu_check.json").write_text(json.dumps({"header": header, "rows": rep.rows, "table": table,
                                                     "total_s": total}, indent=1), encoding="utf-8")
    return 1 if rep.failed or built is None else 0


if __name__ == "__main__":
    sys.exit(main())
