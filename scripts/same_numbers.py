"""Same numbers from the same seeds: every method 3 steps on tiny configs (settings A and B, plus LoRA, grad_accum 2
with EMA, teacher_rollout off-policy, hard routing, merged init) and SFT of a teacher (t2i, edit, LoRA); writes every
logged loss as repr(float) and a sha256 of the exported weights. Run it at two commits and compare the files:

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python scripts/same_numbers.py <checkout> out.json
"""
import hashlib
import json
import sys
import tempfile
from pathlib import Path

repo = Path(sys.argv[1])
sys.path.insert(0, str(repo / "tests"))
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tinycfg import make_tiny_teachers, tiny_distill_yaml, tiny_sft_yaml  # noqa: E402

from danceopd.config import load_config  # noqa: E402
from danceopd.train.distill import DistillConfig, train_distill  # noqa: E402
from danceopd.train.sft import SFTConfig, train_sft  # noqa: E402

torch.set_num_threads(1)
tmp = Path(tempfile.mkdtemp())
teachers = make_tiny_teachers(tmp / "teachers")
res = {}


def digest(out):
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(out / "model.safetensors")).items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    return h.hexdigest()[:16]


def metrics(out):
    p = out / "metrics.jsonl"
    if not p.exists():
        return []
    recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [{k: repr(v) for k, v in r.items() if k.startswith("loss")} for r in recs]


runs = [(m, s, {}) for s in ("A", "B") for m in
        ("joint_sft", "weight_merge", "offpolicy", "soft_mix", "diffusionopd", "flowopd", "danceopd")]
runs += [("danceopd", "A", {"student.lora": {"enabled": True, "rank": 4}}),
         ("danceopd", "A", {"train.grad_accum": 2, "train.ema_decay": 0.9}),
         ("offpolicy", "A", {"offpolicy.states": "teacher_rollout", "query.k": 2}),
         ("soft_mix", "B", {"train.routing": "hard"}),
         ("joint_sft", "A", {"student.init": "merged"})]
for i, (m, s, over) in enumerate(runs):
    cfg = tiny_distill_yaml(tmp / f"c{i}.yaml", teachers, s, m, **{"train.steps": 3, **over})
    out = tmp / f"r{i}"
    train_distill(load_config(DistillConfig, cfg), out, progress=False)
    res[f"{m}/{s}/{json.dumps(over, sort_keys=True)}"] = {"losses": metrics(out), "weights": digest(out)}
for i, over in enumerate([{}, {"data.bucket": "edit"}, {"lora": {"enabled": True, "rank": 4}}]):
    cfg = tiny_sft_yaml(tmp / f"s{i}.yaml", **{"train.steps": 3, **over})
    out = tmp / f"sft{i}"
    train_sft(load_config(SFTConfig, cfg), out, progress=False)
    res[f"sft/{json.dumps(over, sort_keys=True)}"] = {"losses": metrics(out), "weights": digest(out)}
Path(sys.argv[2]).write_text(json.dumps(res, indent=1, sort_keys=True))
print(json.dumps(res, indent=1, sort_keys=True))
