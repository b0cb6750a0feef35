"""Loading and saving RubiksNet weights: the public entry points.

Reading and checking a checkpoint (accepted formats: :mod:`.checkpoint`) needs no model
class; this module adds the model: :func:`load_model`, :func:`validate_state_dict` with
the model file's ``checkpoint_filter_fn``, and :func:`save_weights`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .archs import arch_name
from .checkpoint import (
    CheckpointError,
    check_state_dict,
    infer_arch,
    read_checkpoint,
    resolve_checkpoint,
)
from .io import atomic_write
from .rubiksnet import RubiksNet, checkpoint_filter_fn

__all__ = [
    "CheckpointError",
    "arch_name",
    "infer_arch",
    "load_model",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_weights",
    "validate_state_dict",
]


def validate_state_dict(
    state: dict[str, torch.Tensor],
    model: RubiksNet,
    *,
    new_head: bool = False,
    adapt_in_chans: bool = False,
) -> dict:
    """``state`` converted to ``model``'s keys by :func:`.rubiksnet.checkpoint_filter_fn`,
    every key, shape and shift value checked (:func:`.checkpoint.check_state_dict`)."""
    return check_state_dict(
        state, model, checkpoint_filter_fn, new_head=new_head, adapt_in_chans=adapt_in_chans
    )


def load_model(path: str | os.PathLike, num_classes: int | None = None, **kwargs: Any) -> RubiksNet:
    """A :class:`RubiksNet` built from a checkpoint's metadata/tensors and loaded strictly
    (:meth:`RubiksNet.load_pretrained`).

    A ``num_classes`` different from the checkpoint's gets a fresh head (fine-tuning:
    asked for explicitly). Other keyword arguments go to the model (e.g. ``drop_rate``).
    Every error names the file.
    """
    return RubiksNet.load_pretrained(path, num_classes, **kwargs)


def save_weights(
    model: RubiksNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict as safetensors (atomically) with its architecture in the
    metadata (tier, variant, classes, frames, deploy, and ``model.build_args()`` as
    ``model_args``), so :func:`load_model` rebuilds the same model and
    ``timm.create_model(..., pretrained_cfg_overlay=dict(file=path))`` reads the weights."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "arch": arch_name(model.tier, model.variant),
        "tier": model.tier,
        "variant": model.variant,
        "num_classes": str(model.num_classes),
        "num_frames": str(model.num_frames),
        "model_args": json.dumps(model.build_args()),
    }
    if getattr(model, "deploy", False):  # quantized form: load_model must rebuild it so
        meta["deploy"] = "true"
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path
