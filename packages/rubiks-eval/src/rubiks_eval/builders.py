"""Glue to rubiks-models and rubiks-data: models, datasets and optimizer groups from options."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["param_groups"]


def _fallback_param_groups(model: nn.Module, weight_decay: float, shift_lr_mult: float) -> list:
    shifts, no_decay, decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("shift"):
            shifts.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0, "name": "no_decay"},
        {"params": shifts, "weight_decay": 0.0, "lr_mult": shift_lr_mult, "name": "shift"},
    ]
    return [g for g in groups if g["params"]]


def param_groups(model: nn.Module, weight_decay: float, shift_lr_mult: float) -> list[dict]:
    """SGD groups: shifts (lr x ``shift_lr_mult``, no decay), BN/bias (no decay), the rest.

    Each group carries ``lr_mult``; the training loop sets ``lr = base_lr * lr_mult``.
    """
    return _fallback_param_groups(model, weight_decay, shift_lr_mult)
