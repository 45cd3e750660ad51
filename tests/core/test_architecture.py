"""The package's shape (docs/architecture.md): layers import only downward, no module imports itself back through
others, and no file is long without saying why at its top.

Every import statement counts, wherever it stands (a function-level import is an arrow too), relative ones
resolved (``from .. import x`` is ``danceopd.x`` when that is a module, else the package ``danceopd``)."""

from __future__ import annotations

import ast
from pathlib import Path

import danceopd

ROOT = Path(danceopd.__file__).parent

# package (or top-level module) -> layer; a module may import its own package and lower layers' packages
LAYERS = {
    "danceopd": 0, "danceopd.errors": 0,
    "danceopd.config": 1, "danceopd.core": 1, "danceopd.util": 1,
    "danceopd.world": 2,
    "danceopd.backends": 3,
    "danceopd.eval": 4, "danceopd.methods": 4, "danceopd.testing": 4,
    "danceopd.train": 5, "danceopd.data": 5,
    "danceopd.report": 6,
    "danceopd.demo": 7,
    "danceopd.cli": 8,
}
MAX_LINES = 400
LONG_FILE_REASON = "Long file:"   # a module over MAX_LINES says why in its docstring, after these words


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str], unresolved: list[str] | None = None) -> set[str]:
    """The danceopd modules ``name`` (file ``path``) imports, relative imports resolved; an import naming a
    danceopd module that does not exist is appended to ``unresolved``."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
            if mod.startswith("danceopd") and mod not in known and unresolved is not None:
                unresolved.append(f"{name}: from {'.' * node.level}{node.module or ''} import ... ({mod})")
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import danceopd.core.flow`` -> the module; names -> their module
                t = t.rpartition(".")[0]
            if t.startswith("danceopd") and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {n: imports_of(n, p, known) for n, p in mods.items()}


def test_every_import_resolves():
    """Every ``from ... import`` names an existing danceopd module (a moved file's relative imports included)."""
    mods = modules()
    unresolved: list[str] = []
    for n, p in mods.items():
        imports_of(n, p, set(mods), unresolved)
    assert not unresolved, unresolved


def layer_package(mod: str) -> str:
    best = ""
    for pkg in LAYERS:
        if (mod == pkg or mod.startswith(pkg + ".")) and len(pkg) > len(best):
            best = pkg
    return best


def test_every_module_has_a_layer():
    assert all(layer_package(m) for m in modules()), [m for m in modules() if not layer_package(m)]


def test_relative_imports_are_resolved():
    g = graph()
    assert "danceopd.backends.base" in g["danceopd.backends.world"]          # from .base import guided_field
    assert "danceopd.core" in g["danceopd.methods.danceopd"]                # from ..core import ...
    assert "danceopd.util.lora" in g["danceopd.backends.world_family"]      # from ..util.lora import ...
    assert "danceopd.backends.world_family" in g["danceopd.backends.registry"]


def test_no_upward_imports():
    """A module imports only its own package and packages of lower layers (two packages of one layer do not
    import each other)."""
    bad = []
    for mod, targets in graph().items():
        pkg = layer_package(mod)
        for t in targets:
            tpkg = layer_package(t)
            if tpkg == pkg or tpkg == "danceopd" and t == "danceopd":
                continue
            if LAYERS[tpkg] >= LAYERS[pkg]:
                bad.append(f"{mod} -> {t} (layer {LAYERS[pkg]} -> {LAYERS[tpkg]})")
    assert not bad, "\n".join(bad)


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No module imports itself back through others. A package's ``__init__`` importing its own submodules
    (which import the package's siblings, not the package) is not a cycle; the CLI's command modules registering
    on the ``app`` of ``cli/__init__`` are the one exception (typer's pattern)."""
    g = graph()
    cycles = [c for c in _cycles(g) if not all(m.startswith("danceopd.cli") for m in c) and c not in KNOWN_CYCLES]
    assert not cycles, cycles


KNOWN_CYCLES: list[list[str]] = []   # none


def test_no_long_file_without_a_reason():
    long = []
    for mod, path in modules().items():
        text = path.read_text(encoding="utf-8")
        n = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > MAX_LINES and LONG_FILE_REASON not in doc:
            long.append(f"{mod}: {n} lines")
    assert not long, long
