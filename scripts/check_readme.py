"""Check that the README's commands run as written.

    python scripts/check_readme.py [--tier cheap|slow|all] [--workdir DIR] [--readme README.md]

Every command of the README's bash blocks (and every inline `danceopd ...` command without placeholders) is first
checked statically: the danceopd command line parses (subcommand, options, values), the files it names exist
(configs, scripts, make targets) and its config loads. Then the commands are run as written, in order, in a work
folder that mirrors the repository (configs/, scripts/, .venv/ linked; what they write lands there):

* cheap: the seconds-long ones (world preview / export / validate, sample, edit), run in the default test tier;
* slow: the minutes-long ones, after the README's set-up (`make demo`, done here as its reproduction step with the
  installed package): reproduce --preset quick, eval of the quick run's student, distill, the benchmarks;
* never run: commands that need what no fresh clone has (`/models/...` pipelines, GPUs / accelerate launch, the
  99-minute teacher training, `make` itself): checked statically only, listed with the reason.

Exit status 1 with one line per failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ("configs", "scripts", ".venv", "danceopd", "Makefile", "install.sh", "pyproject.toml", "README.md")
# (pattern on the command, tier, reason); the first match wins; unmatched commands are "cheap"
RULES = (
    (r"^make (test|demo)$", "static", "the set-up commands themselves (install + test / reproduce)"),
    (r"pip install", "static", "an installation (install.sh dev, which make test runs, does the same)"),
    (r"danceopd demo", "static", "a server: tests/demo/test_demo_browser.py drives it in headless Chromium"),
    (r"^accelerate launch", "static", "multi-GPU launch of a real diffusers model"),
    (r"--pipeline /models/", "static", "needs a downloaded diffusers pipeline under /models"),
    (r"danceopd train +--config configs/world/t2i\.yaml", "static", "99 minutes of 2-core training"),
    (r"danceopd reproduce --preset full", "static", "tens of hours (the staged runner is tested in tests/report)"),
    (r"danceopd reproduce --preset quick", "slow", ""),
    (r"danceopd eval ", "slow", ""),
    (r"danceopd distill ", "slow", ""),
    (r"scripts/bench_", "slow", ""),
)


@dataclass
class Command:
    text: str
    line: int
    tier: str
    reason: str = ""


def readme_commands(readme: Path) -> list[Command]:
    """Commands of the bash blocks (continuations joined, comments dropped) and inline `danceopd ...` commands."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    out, in_bash, buf, start = [], False, "", 0
    for i, ln in enumerate(lines, 1):
        if ln.strip().startswith("```"):
            in_bash = ln.strip() == "```bash" and not in_bash
            continue
        if in_bash:
            code = re.sub(r"\s+#.*$", "", ln).strip() if not ln.strip().startswith("#") else ""
            if not code:
                continue
            start = start or i
            if code.endswith("\\"):
                buf += code[:-1] + " "
                continue
            out.append(_classify(buf + code, start))
            buf, start = "", 0
        else:
            for m in re.finditer(r"`((?:\.venv/bin/)?danceopd [^`<>|]+)`", ln):
                if "..." not in m.group(1):
                    out.append(Command(m.group(1), i, "static", "inline command in the text"))
    return out


def _classify(text: str, line: int) -> Command:
    for pat, tier, reason in RULES:
        if re.search(pat, text):
            return Command(text, line, tier, reason)
    return Command(text, line, "cheap")


def danceopd_args(text: str) -> list[str] | None:
    """The danceopd argument list of a command (``danceopd ...``, ``.venv/bin/danceopd ...``, ``-m danceopd.cli``)."""
    words = shlex.split(text)
    for i, w in enumerate(words):
        if w.endswith("danceopd") and "/" not in w.replace(".venv/bin/", ""):
            return words[i + 1:]
        if w == "danceopd.cli" and i and words[i - 1] == "-m":
            return words[i + 1:]
    return None


def static_check(cmd: Command) -> str | None:
    """Why the command cannot run as written (None: it parses and what it names exists)."""
    words = shlex.split(cmd.text)
    for w in words:
        if re.match(r"^(configs|scripts)/[\w./-]+$", w) and not (ROOT / w).exists():
            return f"{w} does not exist"
    if words[0] == "make" and not re.search(rf"^{re.escape(words[1])}:", (ROOT / "Makefile").read_text(), re.M):
        return f"no make target {words[1]!r}"
    if words[0] == "python" and not (ROOT / words[1]).is_file():
        return f"{words[1]} does not exist"
    args = danceopd_args(cmd.text)
    if args is None:
        return None
    err = _parse(args)
    if err:
        return err
    if args[0] in ("train", "distill") and "--config" in args:
        from danceopd.config import load_config
        from danceopd.errors import UserError

        cls = _config_class(args[0])
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        try:
            load_config(cls, ROOT / args[args.index("--config") + 1], sets)
        except UserError as e:
            return str(e)
    return None


def _config_class(verb: str):
    if verb == "train":
        from danceopd.train.sft import SFTConfig

        return SFTConfig
    from danceopd.train.distill import DistillConfig

    return DistillConfig


def _parse(args: list[str]) -> str | None:
    """Parse ``args`` with the danceopd command line (click) without running anything."""
    from typer.main import get_command

    from danceopd.cli import _click_exception_types, _register, app

    _register()
    usage, _ = _click_exception_types()
    cmd, name, rest = get_command(app), "danceopd", list(args)
    try:
        parent = None
        while True:
            ctx = cmd.make_context(name, list(rest), parent=parent, resilient_parsing=False)
            if not hasattr(cmd, "resolve_command"):
                return None
            protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", None) or []
            rest = list(protected) + list(ctx.args)  # (typer >= 0.16 vendors click: _protected_args)
            if not rest:
                return f"{name}: missing subcommand"
            name, cmd, rest = *cmd.resolve_command(ctx, rest)[:2], rest[1:]
            parent = ctx
    except usage as e:
        return f"{name}: {e.format_message()}"


def make_workdir(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in MIRROR:
        link = workdir / name
        if not link.exists() and (ROOT / name).exists():
            link.symlink_to(ROOT / name)
    return workdir


def run(cmd: Command, workdir: Path, timeout: float) -> str | None:
    env = {**os.environ, "PATH": f"{workdir / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    text = cmd.text.replace("python scripts/", f"{sys.executable} scripts/", 1)
    try:
        r = subprocess.run(text, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:.0f} s"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return f"exit {r.returncode}: {tail[0][:300]}"
    return None


def setup_demo(workdir: Path, timeout: float) -> str | None:
    """`make demo`'s reproduction step (the package is installed already)."""
    return run(Command("danceopd reproduce --preset quick --out runs/quick --seed 0", 0, "slow"), workdir, timeout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", default="cheap", choices=("static", "cheap", "slow", "all"))
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "readme_check")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per command")
    a = ap.parse_args(argv)
    cmds = readme_commands(a.readme)
    failures = []
    for c in cmds:
        err = static_check(c)
        if err:
            failures.append(f"README.md:{c.line}: `{c.text}`: {err}")
    tiers = {"static": (), "cheap": ("cheap",), "slow": ("slow",), "all": ("cheap", "slow")}[a.tier]
    workdir = make_workdir(a.workdir)
    if "slow" in tiers and not (workdir / "runs" / "quick" / "report.md").is_file():
        err = setup_demo(workdir, a.timeout)
        if err:
            failures.append(f"set-up (make demo's reproduction): {err}")
    for c in cmds:
        if c.tier in tiers:
            t0 = time.perf_counter()
            err = run(c, workdir, a.timeout)
            print(f"{'FAIL' if err else 'ok  '} {time.perf_counter() - t0:6.1f} s  {c.text}")
            if err:
                failures.append(f"README.md:{c.line}: `{c.text}`: {err}")
        elif c.tier == "static":
            print(f"static      {c.text}  ({c.reason})")
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
