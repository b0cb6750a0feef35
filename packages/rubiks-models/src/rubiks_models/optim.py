"""Optimizer parameter groups (docs/spec.md §2.5) and AQ training helpers (§2.3, ours)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .rubiksnet import TemporalAttentionShift, is_shift_param

__all__ = [
    "aq_budget_penalty",
    "aq_enforce_budget",
    "aq_shifted_fraction",
    "aq_temperature",
    "param_groups",
    "set_aq_temperature",
]


def param_groups(
    model: nn.Module,
    weight_decay: float = 5e-4,
    shift_lr_mult: float = 0.01,
    lr: float | None = None,
    attention_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups of the reference policy, the classifier included.

    * ``decay``: conv and linear weights (``weight_decay``, lr x 1);
    * ``no_decay``: BatchNorm weights/biases and every bias (no decay, lr x 1);
    * ``shift``: RubiksShift tensors (no decay, lr x ``shift_lr_mult``; the reference
      helper uses 0.01, its fine-tuning example 0.1);
    * ``temporal_attention``: AQ tap logits (no decay, lr x ``attention_lr_mult``).

    Each group carries ``lr_mult`` and ``name``; with ``lr`` given, ``lr`` is set to
    ``lr * lr_mult`` so the list can go straight to ``torch.optim.SGD``. Frozen parameters
    are left out.
    """
    groups: dict[str, dict[str, Any]] = {
        "decay": {"params": [], "weight_decay": weight_decay, "lr_mult": 1.0},
        "no_decay": {"params": [], "weight_decay": 0.0, "lr_mult": 1.0},
        "shift": {"params": [], "weight_decay": 0.0, "lr_mult": shift_lr_mult},
        "temporal_attention": {"params": [], "weight_decay": 0.0, "lr_mult": attention_lr_mult},
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("tshift.weight"):
            kind = "temporal_attention"
        elif is_shift_param(name):
            kind = "shift"
        elif p.ndim <= 1:
            kind = "no_decay"
        else:
            kind = "decay"
        groups[kind]["params"].append(p)
    out = []
    for name, g in groups.items():
        if g["params"]:
            g["name"] = name
            if lr is not None:
                g["lr"] = lr * g["lr_mult"]
            out.append(g)
    return out


def _layers(model: nn.Module) -> list[TemporalAttentionShift]:
    layers = [m for m in model.modules() if isinstance(m, TemporalAttentionShift)]
    if not layers:
        raise ValueError("model has no AQ temporal attention layers (use a *_aq model)")
    return layers


@torch.no_grad()
def set_aq_temperature(model: nn.Module, tau: float) -> None:
    """Set the temperature of every AQ layer (a buffer; saved with the weights)."""
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"temperature must be a finite number > 0, got {tau}")
    for m in _layers(model):
        m.tau.fill_(tau)


def aq_temperature(
    step: int, total_steps: int, start: float = 2.0, end: float = 0.01, warmup: int = 0
) -> float:
    """Exponential annealing from ``start`` (released value 2.0) to ``end`` over the steps
    after ``warmup``; near 0 the taps are one-hot (integer shifts)."""
    for name, tau in (("start", start), ("end", end)):
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"aq_temperature: {name} must be a finite number > 0, got {tau}")
    if step <= warmup or total_steps <= warmup:
        return start
    frac = min(1.0, (step - warmup) / (total_steps - warmup))
    return float(math.exp(math.log(start) + frac * (math.log(end) - math.log(start))))


def aq_shifted_fraction(model: nn.Module) -> torch.Tensor:
    """Expected fraction of channels with a non-zero temporal shift: mean of ``1 - a_c1``
    over every AQ channel (differentiable)."""
    return torch.cat([1 - m.attention()[:, 1] for m in _layers(model)]).mean()


def aq_budget_penalty(model: nn.Module, budget: float = 0.125) -> torch.Tensor:
    """``max(0, shifted_fraction - budget)``: add ``lambda *`` this to the loss to keep at
    most ``budget`` of the channels temporally shifted (the released checkpoint: 0.125)."""
    return torch.relu(aq_shifted_fraction(model) - budget)


@torch.no_grad()
def aq_enforce_budget(model: nn.Module, budget: float = 0.125) -> int:
    """Make at most ``floor(budget x channels)`` AQ channels (over the whole model) pick a
    non-zero temporal shift; returns how many channels were moved to the centre tap.

    Training pushes the expected fraction towards the budget but, once the annealed
    softmax saturates, cannot move channels that are confidently shifted; hardening then
    keeps the shifted channels with the largest margin ``max(z0, z2) - z1`` of their
    normalised logits ``z = w / std(w)`` and re-centres the rest (their ``w`` becomes
    ``(0, 1, 0)``, a one-hot centre tap at any low temperature).
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget must be a fraction in [0, 1], got {budget}")
    layers = _layers(model)
    z = [m.weight / (m.weight.std(dim=1, keepdim=True) + 1e-6) for m in layers]
    margins = torch.cat([torch.maximum(q[:, 0], q[:, 2]) - q[:, 1] for q in z])
    shifted = torch.cat([q.argmax(1) != 1 for q in z])
    allowed = math.floor(budget * margins.numel() + 1e-9)
    if int(shifted.sum()) <= allowed:
        return 0
    order = torch.argsort(torch.where(shifted, margins, -torch.inf), descending=True)
    recentre = torch.zeros_like(shifted)
    recentre[order[allowed:]] = True
    recentre &= shifted
    start = 0
    for m in layers:
        mask = recentre[start : start + m.channels]
        m.weight[mask] = torch.tensor([0.0, 1.0, 0.0], dtype=m.weight.dtype, device=m.weight.device)
        start += m.channels
    return int(recentre.sum())
