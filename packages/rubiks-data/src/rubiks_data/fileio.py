"""Atomic file and folder writes (a reader never sees a half-written file)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["atomic_write_json", "atomic_write_text", "replace_dir", "temp_dir_for", "temp_path_for"]


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name next to ``path`` with the same suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def temp_dir_for(path: Path) -> Path:
    """A fresh temporary folder next to ``path`` (to be moved there by :func:`replace_dir`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path`` (replacing an existing one)."""
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
