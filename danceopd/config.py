"""Typed configs: dataclasses filled from YAML plus ``--set a.b=c`` overrides. Unknown keys, wrong types and
out-of-range values are ``UserError``s naming the file and key. Nothing is ever executed from a config."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import UserError

_SCI = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise UserError(f"{where}: expected one of {', '.join(map(str, get_args(tp)))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            return float(value)   # YAML 1.1 reads 5e-05 / 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def open_sections(cls) -> dict[str, type]:
    """Extra top-level sections a config class accepts besides its fields: ``cls.open_sections()`` (a registry
    filled elsewhere, e.g. the training methods' sections) -> {key: dataclass}; parsed into ``obj.sections``."""
    fn = getattr(cls, "open_sections", None)
    return dict(fn()) if fn is not None else {}


def from_dict(cls, data: Any, where: str = "config"):
    """Build dataclass ``cls`` from a mapping; every key must be a field (or one of its ``open_sections``, every
    one of which is then present in ``obj.sections``, defaults where not given). Calls ``validate()`` if
    defined."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra = open_sections(cls)
    kwargs, sections = {}, {}
    for key, value in data.items():
        if key in extra:
            sections[key] = _coerce(value, extra[key], f"{where}.{key}")
            continue
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r}; expected one of {', '.join([*fields, *extra])}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    obj = cls(**kwargs)
    if extra:
        obj.sections = {k: sections[k] if k in sections else from_dict(tp, {}, f"{where}.{k}")
                        for k, tp in extra.items()}
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _set_path(d: dict, dotted: str, value, where: str):
    """Set ``a.b.c`` in nested mappings; a numeric part indexes a list (``routes.0.teacher``)."""
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        if isinstance(cur, list):
            if not k.isdigit() or int(k) >= len(cur):
                raise UserError(f"{where}: {dotted!r}: no list item {k!r}")
            cur = cur[int(k)]
            continue
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, (dict, list)):
            raise UserError(f"{where}: {dotted!r}: {k!r} is not a section")
        cur = nxt
    last = keys[-1]
    if isinstance(cur, list):
        if not last.isdigit() or int(last) >= len(cur):
            raise UserError(f"{where}: {dotted!r}: no list item {last!r}")
        cur[int(last)] = value
    else:
        cur[last] = value


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_includes(data: dict, path: Path, depth: int) -> dict:
    """``include: [other.yaml, ...]`` (paths relative to this file) are merged first, this file on top."""
    inc = data.pop("include", None)
    if inc is None:
        return data
    if depth > 8:
        raise UserError(f"{path}: include nesting too deep (cycle?)")
    if isinstance(inc, str):
        inc = [inc]
    if not isinstance(inc, list) or not all(isinstance(i, str) for i in inc):
        raise UserError(f"{path}: include must be a file name or a list of file names")
    merged: dict = {}
    for rel in inc:
        p = (path.parent / rel).resolve()
        if not p.is_file():
            raise UserError(f"{path}: included file {rel!r} not found")
        try:
            sub = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(sub, dict):
            raise UserError(f"{p}: top level must be a mapping of keys")
        merged = _deep_merge(merged, _resolve_includes(sub, p, depth + 1))
    return _deep_merge(merged, data)


def _check_override_key(cls, dotted: str, ov: str) -> None:
    """``--set a.b=c`` names fields of ``cls``: an unknown key is reported against the override itself."""
    tp, section = cls, "the config"
    for part in dotted.split("."):
        if get_origin(tp) in (typing.Union, types.UnionType):
            tp = next((a for a in get_args(tp) if a is not type(None)), Any)
        if get_origin(tp) in (list, tuple):
            tp = (get_args(tp) or (Any,))[0]
        elif dataclasses.is_dataclass(tp):
            fields = [f.name for f in dataclasses.fields(tp) if f.init]
            extra = open_sections(tp)
            if part in extra:
                tp = extra[part]
            elif part not in fields:
                raise UserError(f"--set {ov}: unknown key {part!r} in {section}; expected one of "
                                f"{', '.join([*fields, *extra])}")
            else:
                tp = typing.get_type_hints(tp)[part]
        else:
            return  # a free-form mapping or a scalar: checked when the config is built
        section = part if section == "the config" else f"{section}.{part}"


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) and apply ``a.b=c`` overrides
    (values parsed as YAML scalars)."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"{path}: not UTF-8") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: top level must be a mapping of keys")
        data = _resolve_includes(data, path, depth=0)
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"--set {ov!r}: expected key.path=value")
        k, v = ov.split("=", 1)
        if not k.strip():
            raise UserError(f"--set {ov!r}: empty key")
        try:
            parsed = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            parsed = v
        _check_override_key(cls, k.strip(), ov)
        _set_path(data, k.strip(), parsed, f"--set {ov!r}")
    try:
        return from_dict(cls, data, where)
    except UserError as e:  # a bad value given by an override: name the override, not the file
        for ov in reversed(list(overrides)):
            prefix = f"{where}.{ov.split('=', 1)[0].strip()}:"
            if str(e).startswith(prefix):
                raise UserError(f"--set {ov}:{str(e)[len(prefix):]}") from None
        raise
