"""Checks of command-line values that run before any work: devices, crops and output paths.

Each check returns an error message (or None) for the CLI to report with
``parser.error``, so a user mistake costs one line and no computation.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

__all__ = ["crop_error", "device_error", "module_error", "output_errors"]


def device_error(device: str | None) -> str | None:
    """Why ``--device`` cannot be used here (unknown, or a GPU this machine lacks)."""
    if device in (None, "", "auto"):
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device {device!r} is not a device; use cpu, cuda or cuda:N"
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        return f"--device {device!r}: only cpu and cuda devices are supported"
    if not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available on this machine"
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        return f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..{count - 1})"
    return None


def crop_error(flag: str, crop: int, scale_size: int | None, crop_kind: str = "crop") -> str | None:
    """Why a ``crop``-pixel crop (option ``flag``) cannot be cut from frames whose short
    side is resized to ``scale_size`` (None: the default for the crop)."""
    from .builders import default_scale_size

    scale = scale_size or default_scale_size(crop)
    if crop > scale:
        return (
            f"{flag} {crop} is larger than --scale-size {scale} (the short side after "
            f"resizing): no {crop_kind} fits"
        )
    return None


def module_error(flag: str, module: str, extra: str) -> str | None:
    """Why ``flag`` cannot work: ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        return f"{flag} needs {module}: pip install 'rubiks-eval[{extra}]'"
    return None


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def output_errors(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike | None] = (),
    input_roots: Iterable[str | os.PathLike | None] = (),
    *,
    overwrite: bool = False,
) -> list[str]:
    """Problems with the output files ``{flag: path}`` of one run.

    An output may not be a folder, another output, an input file of the run, inside a
    file's place (a parent that is a file), or any file under an input folder
    (``input_roots``, e.g. the dataset); an existing file is kept unless ``overwrite``.
    """
    errors: list[str] = []
    given = {flag: _resolved(p) for flag, p in outputs.items() if p}
    ins = {_resolved(p) for p in inputs if p and Path(p).expanduser().exists()}
    roots = [_resolved(p) for p in input_roots if p and Path(p).expanduser().is_dir()]
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        if path in seen:
            errors.append(f"{flag} and {seen[path]} name the same file {path}")
            continue
        seen[path] = flag
        if path.is_dir():
            errors.append(f"{flag} {path} is a folder; name a file")
        elif path in ins:
            errors.append(f"{flag} {path} is an input of this run; choose another file")
        elif any(root in path.parents for root in roots) and path.exists():
            errors.append(f"{flag} {path} is a file of the dataset; choose another file")
        elif path.exists() and not overwrite:
            errors.append(f"{flag} {path} exists; pass --overwrite to replace it")
        else:
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                errors.append(f"{flag} {path}: {parent} is a file, not a folder")
            elif parent is not None and not os.access(parent, os.W_OK):
                errors.append(f"{flag} {path}: cannot write under {parent}")
    return errors
