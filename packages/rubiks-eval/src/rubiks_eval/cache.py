"""A cache of generated data sets, each directory published atomically when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "cached_directory"]

_MARKER = ".complete"


def cache_root() -> Path:
    """``$RUBIKSNET_CACHE``, else ``$XDG_CACHE_HOME/rubiksnet``, else ``~/.cache/rubiksnet``."""
    env = os.environ.get("RUBIKSNET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rubiksnet"


def cached_directory(
    root: str | os.PathLike,
    name: str,
    key: dict[str, Any],
    build: Callable[[Path], None],
    *,
    rebuild: bool = False,
) -> tuple[Path, bool]:
    """Return ``root/<name>-<hash(key)>``, building it with ``build(tmp_dir)`` if missing.

    The directory is built under a temporary name and renamed into place only when
    ``build`` returned, so a crash or a concurrent run never exposes a partial copy.
    Returns (path, built_now).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    final = root / f"{name}-{digest}"
    if rebuild and final.exists():
        shutil.rmtree(final)
    if (final / _MARKER).exists():
        return final, False
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        build(tmp)
        (tmp / _MARKER).write_text(json.dumps(key, sort_keys=True, indent=2) + "\n")
        if final.exists() and not (final / _MARKER).exists():
            shutil.rmtree(final)  # a stale incomplete copy (not produced by this function)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _MARKER).exists():
                raise
            shutil.rmtree(tmp)  # another process published it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True
