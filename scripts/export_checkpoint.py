"""Export the EMA weights of a training checkpoint as a model file (to evaluate or sample mid-run).

    python scripts/export_checkpoint.py runs/teachers/t2i [--out runs/teachers/t2i/model-step.safetensors]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from danceopd.backends.world import save_world_model
from danceopd.config import from_dict
from danceopd.train.checkpoint import latest_good
from danceopd.train.sft import SFTConfig, build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    ck = latest_good(a.run)
    if ck is None:
        raise SystemExit(f"{a.run}: no good checkpoint")
    cfg = from_dict(SFTConfig, json.loads((a.run / "run_config.json").read_text()))
    net, tok = build_model(cfg)
    from safetensors.torch import load_file

    # the checkpoint's raw weights first (frozen parameters such as a frozen text encoder have no EMA), then the EMA
    net.load_state_dict(load_file(str(ck / "model.safetensors")), strict=True)
    ema = {k[len("ema."):]: v for k, v in load_file(str(ck / "extra.safetensors")).items()}
    missing, unexpected = net.load_state_dict(ema, strict=False)
    missing = [k for k in missing if not (cfg.train.freeze_text and k.startswith("text."))]
    if missing or unexpected:
        raise SystemExit(f"checkpoint EMA does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    step = int(ck.name.split("-")[1])
    out = a.out or a.run / f"model-step{step}.safetensors"
    save_world_model(net, tok, out, cfg.sampling, meta={"name": cfg.name, "resolution": cfg.data.resolution,
                                                         "steps": step, "config": json.dumps(dataclasses.asdict(cfg))})
    print(out)


if __name__ == "__main__":
    main()
