"""Ship trained teachers: copy each run's EMA weights into danceopd/assets/teachers/<name>.safetensors (fp16) and
record a manifest entry (sha256, config, command, git SHA, wall time, steps, measured scores).

    python scripts/ship_teachers.py --run t2i=runs/teachers/t2i --run edit=runs/teachers/edit [--eval-n N]

Scores are measured here with the evaluation suite (default sampler settings, seed 0) and stored in the manifest;
tests check that the shipped files reproduce them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from danceopd.backends.registry import ASSET_DIR
from danceopd.backends.world import load_world_model, save_world_model

CHECK_N = 4


def shipped_name_of(init: str | None) -> str | None:
    """A run trained from a local weight file (e.g. a candidate base before it shipped) is recorded as trained from
    the shipped teacher whose tensors equal that file's, so the manifest's command reproduces it; otherwise as is."""
    if not init or init.startswith("world:") or not Path(init).is_file():
        return init
    mine = load_file(init)
    for f in sorted(ASSET_DIR.glob("*.safetensors")):
        theirs = load_file(f)
        if theirs.keys() == mine.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine):
            print(f"  init {init} equals the shipped world:{f.stem} tensor for tensor: recorded as world:{f.stem}")
            return f"world:{f.stem}"
    return init


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="name=run_folder")
    ap.add_argument("--eval-n", type=int, default=None, help="evaluation sample count (default: suite default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    manifest_path = ASSET_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "configs"], capture_output=True, text=True).stdout
    if dirty:  # the manifest's command must reproduce the teacher at the recorded commit
        raise SystemExit(f"configs/ has uncommitted changes; commit them first (the manifest records {sha[:7]}):\n"
                         f"{dirty}")
    for item in a.run:
        name, run = item.split("=", 1)
        run = Path(run)
        net, tok, sampling, meta = load_world_model(run / "model.safetensors")
        config = json.loads(meta.get("config", "{}"))
        config["init"] = shipped_name_of(config.get("init"))
        dst = ASSET_DIR / f"{name}.safetensors"
        meta = {**meta, "shipped_from": str(run), "shipped_git_sha": sha}
        save_world_model(net, tok, dst, sampling, dtype=torch.float16, meta=meta)
        entry = {
            "file": dst.name,
            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "bytes": dst.stat().st_size,
            "config": config,
            "command": f"danceopd train --config configs/world/{name}.yaml --out runs/teachers/{name}",
            "git_sha": sha,
            "config_git_sha": sha,  # a commit whose configs/world/<name>.yaml is the recorded config
            "steps": meta.get("steps"),
            "wall_time_s": meta.get("wall_time_s"),
            "params": sum(p.numel() for p in net.parameters()),
            "shipped_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if not a.no_eval:
            from danceopd.eval.generators import resolve_generator
            from danceopd.eval.suite import evaluate

            t0 = time.time()
            kw = {} if a.eval_n is None else {"n": a.eval_n}
            suite = "all" if net.cfg.edit else "t2i"  # a model without source-image input cannot edit
            entry["suite"] = suite
            entry["scores"] = evaluate(resolve_generator(f"world:{name}", 32), suite=suite, seed=a.seed, **kw)
            entry["eval"] = {"seed": a.seed, "n": a.eval_n, "wall_time_s": round(time.time() - t0, 1)}
            # a small, fast re-check the test suite reproduces on every run (tests/train/test_shipped_teachers.py)
            entry["check"] = {"n": CHECK_N, "seed": a.seed, "scores": evaluate(
                resolve_generator(f"world:{name}", 32), suite=suite, seed=a.seed, n=CHECK_N, progress=False)}
        manifest[name] = entry
        print(f"shipped {name}: {dst} ({entry['bytes'] / 1e6:.2f} MB)")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
