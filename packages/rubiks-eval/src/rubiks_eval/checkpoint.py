"""Training checkpoints: safetensors weights + a torch state file, committed atomically.

Layout in the run directory::

    checkpoints/epoch003-step0000450.safetensors   model weights (+ metadata)
    checkpoints/epoch003-step0000450.state.pt      optimizer, scheduler, scaler, RNG, progress
    last.json                                      names the newest complete pair
    best.safetensors                               weights of the best validation top-1

Both files of a pair are written atomically before ``last.json`` is atomically replaced,
so an interruption at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_write, atomic_write_json

__all__ = [
    "load_last_checkpoint",
    "load_weights",
    "save_checkpoint",
    "save_weights",
    "weights_metadata",
]


def _contiguous_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_weights(
    path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Atomically write a state dict as safetensors; metadata values are stored as strings."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    tensors = _contiguous_state(state)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict on the CPU."""
    return load_file(str(path))


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    epoch: int,
    step: int,
    model_state: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    train_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write weights and state for (epoch, step), point ``last.json`` at them, prune old ones."""
    run_dir = Path(run_dir)
    ckdir = run_dir / "checkpoints"
    stem = f"epoch{epoch:03d}-step{step:07d}"
    weights = save_weights(ckdir / f"{stem}.safetensors", model_state, metadata)
    state_path = ckdir / f"{stem}.state.pt"
    atomic_write(state_path, lambda tmp: torch.save(train_state, tmp))
    atomic_write_json(
        run_dir / "last.json",
        {
            "weights": f"checkpoints/{weights.name}",
            "state": f"checkpoints/{state_path.name}",
            "epoch": epoch,
            "step": step,
        },
    )
    _prune(ckdir, keep, keep_stem=stem)
    return weights


def _prune(ckdir: Path, keep: int, keep_stem: str) -> None:
    stems = sorted({p.name.split(".")[0] for p in ckdir.glob("epoch*-step*.safetensors")})
    for stem in stems[:-keep] if keep > 0 else []:
        if stem == keep_stem:
            continue
        for suffix in (".safetensors", ".state.pt"):
            with contextlib.suppress(FileNotFoundError):
                (ckdir / f"{stem}{suffix}").unlink()


def load_last_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, dict, dict] | None:
    """(model state, train state, pointer) of the newest complete checkpoint, or None."""
    run_dir = Path(run_dir)
    pointer = run_dir / "last.json"
    if not pointer.exists():
        return None
    info = json.loads(pointer.read_text())
    weights = load_weights(run_dir / info["weights"])
    state = torch.load(run_dir / info["state"], map_location="cpu", weights_only=False)
    return weights, state, info
