"""Model specs of the diffusers families (files only, nothing is loaded)::

    [<family>:]<dir>[+transformer:<dir>][+lora:<dir|file>]...

``<dir>`` is a diffusers pipeline folder (``model_index.json``) or a danceopd run folder of this family
(``danceopd_model.json``: its init plus its LoRA or full transformer). ``+transformer:`` replaces the
transformer by a full checkpoint folder (``save_pretrained`` layout), ``+lora:`` fuses a diffusers-format LoRA
into it (in order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserError
from .options import FORMAT, LORA_FILE, MODEL_JSON


@dataclass
class ModelSpec:
    """A transformer as a chain of steps on top of one base pipeline folder."""

    text: str
    base: Path                                       # the diffusers pipeline folder (components and scheduler)
    ops: list[tuple[str, Path]] = field(default_factory=list)   # ("transformer"|"lora"|"edit_weights", path)
    info: dict = field(default_factory=dict)         # danceopd_model.json of a run folder, if the spec is one

    @property
    def edit(self) -> bool:
        return any(kind == "edit_weights" for kind, _ in self.ops) or bool(self.info.get("edit"))

    def canonical(self) -> str:
        return "+".join([str(self.base)] + [f"{k}:{p}" for k, p in self.ops])


_MOD_RE = re.compile(r"\+(?=(?:lora|transformer):)")


def lora_file(p: Path) -> Path:
    return p / LORA_FILE if p.is_dir() else p


def family_names() -> set[str]:
    """Every family name a spec may start with (``world``, the registered ones, the diffusers family modules)."""
    from ..registry import FAMILIES
    from .families import names

    return {"world", *FAMILIES, *names()}


def parse_spec(spec: str, family: str, _depth: int = 0) -> ModelSpec:
    """Parse and check (files only, nothing is loaded) a model spec of ``family``."""
    if _depth > 8:
        raise UserError(f"model {spec!r}: run folders nest too deeply (a cycle?)")
    s = str(spec).strip()
    m = re.match(r"^([a-z_0-9]+):(?!//)", s)
    if m and m.group(1) in family_names():
        if m.group(1) != family:
            raise UserError(f"model {spec!r} is a {m.group(1)!r} model, but this backend is {family!r}")
        s = s[m.end():]
    head, *mods = _MOD_RE.split(s)
    if not head:
        raise UserError(f"model {spec!r}: empty path")
    root = Path(head).expanduser()
    if (root / MODEL_JSON).is_file():
        try:
            info = json.loads((root / MODEL_JSON).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{root / MODEL_JSON}: unreadable ({e})") from None
        if info.get("format") != FORMAT:
            raise UserError(f"{root / MODEL_JSON}: not a danceopd diffusers run (format {info.get('format')!r})")
        if info.get("family") != family:
            raise UserError(f"{root}: a {info.get('family')!r} run, but this backend is {family!r}")
        inner = parse_spec(info["init"], family, _depth + 1)
        ops = list(inner.ops)
        if info.get("edit_weights"):
            ops.append(("edit_weights", root / info["edit_weights"]))
        if info.get("kind") == "lora":
            ops.append(("lora", root / LORA_FILE))
        else:
            ops = [("transformer", root / "transformer")]
        spec_obj = ModelSpec(spec, inner.base, ops, info)
    elif (root / "model_index.json").is_file():
        spec_obj = ModelSpec(spec, root.resolve())
    elif root.exists():
        raise UserError(f"model {spec!r}: {root} is neither a diffusers pipeline folder (no model_index.json) nor a "
                        f"danceopd {family} run folder (no {MODEL_JSON})")
    else:
        raise UserError(f"model {spec!r}: {root} not found (expected a diffusers pipeline folder or a run folder)")
    for mod in mods:
        kind, _, path = mod.partition(":")
        p = Path(path).expanduser()
        if kind == "lora":
            if not lora_file(p).is_file():
                raise UserError(f"model {spec!r}: LoRA {p} not found (a .safetensors file or a folder with {LORA_FILE})")
            spec_obj.ops.append(("lora", lora_file(p).resolve()))
        else:
            if not (p / "config.json").is_file():
                raise UserError(f"model {spec!r}: transformer folder {p} has no config.json")
            spec_obj.ops.append(("transformer", p.resolve()))
    for kind, p in spec_obj.ops:
        if not p.exists():
            raise UserError(f"model {spec!r}: {kind} file {p} is missing (incomplete run folder?)")
    return spec_obj


def pipeline_class_name(base: Path) -> str:
    try:
        return json.loads((Path(base) / "model_index.json").read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{base}/model_index.json: unreadable ({e})") from None
