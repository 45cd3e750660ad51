"""Ship the full preset's converged students with the package (maintainers, after the curves have finished).

    python scripts/ship_students.py [--from results/full] [--to danceopd/assets/students] [--settings A,B]

Copies the published fp16 seed-0 curve student of every main method, per setting (by default every setting whose
four curves have finished; ``--settings`` names them, each must be complete) and writes
``manifest.json`` (setting, method, steps, lr, sampling scale, cell key, command, git sha, sha256, scores, curve).
From then on ``danceopd reproduce --preset quick`` (the README's main command) evaluates these students and the
teachers and runs a short live distillation instead of training 120-step students. Exit 2 with one line when a
student is missing (nothing is written then). A setting not shipped is left out of the manifest (the main command
then shows the shipped settings' comparison only and says which setting is missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from danceopd.errors import UserError
from danceopd.report.cell import STUDENT_DIR
from danceopd.report.ship import ship_students


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, default=Path("results/full"))
    ap.add_argument("--to", dest="dst", type=Path, default=STUDENT_DIR)
    ap.add_argument("--settings", default=None, help="comma-separated settings to ship (default: every complete one)")
    a = ap.parse_args()
    try:
        settings = tuple(x.strip() for x in a.settings.split(",") if x.strip()) if a.settings else None
        man = ship_students(a.src, a.dst, settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, e in man.items():
        print(f"{name}: {e['steps']} steps, lr {e['lr']}, scale {e['sample_scale']}, sha256 {e['sha256'][:12]}")
    print(f"wrote {a.dst / 'manifest.json'} ({len(man)} students)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
