"""The one atomic-write helper: a file is written to a unique temporary sibling, flushed to disk, and renamed
over its destination, so a reader sees the old file or the new one, never half of one (and an interrupted write
leaves no partial file behind)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that infer a format from it work); when the
    block ends without an exception, fsync it, set ``mode`` and rename it onto ``path``; otherwise remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON with two-space indent and sorted keys (the run folders' ``*.json``)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def save_png_atomic(img, path: str | Path) -> None:
    """A PIL image as PNG."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_safetensors_atomic(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
