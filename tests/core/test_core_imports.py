"""danceopd.core must stay a plain-torch math library."""

import ast
from pathlib import Path

import danceopd.core as core

ALLOWED = {"__future__", "torch", "numpy", "math", "dataclasses", "typing", "inspect"}
CORE_DIR = Path(core.__file__).parent


def test_core_imports_only_allowed_modules():
    offenders = []
    files = sorted(CORE_DIR.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:  # relative import inside danceopd.core
                    continue
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    assert not offenders, offenders


def test_public_api_is_exported():
    for name in core.__all__:
        assert hasattr(core, name), name
    for name in [
        "interpolate",
        "sde_step",
        "cfg_combine",
        "RouteSampler",
        "rollout_to_queries",
        "ppo_clip_loss",
    ]:
        assert name in core.__all__
