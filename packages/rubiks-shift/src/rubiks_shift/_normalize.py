"""Per-channel shift-gradient normalisation (docs/spec.md §1.5), in torch, for any device."""

from __future__ import annotations

import math

import torch


def normalize_shift_grad(grad: torch.Tensor, t_factor: float = 1.0) -> torch.Tensor:
    """Normalise a raw (3, C) shift gradient channel by channel.

    ``t_factor >= 0``: v = (t_factor * g_T, g_H, g_W) becomes v / |v| (left as is when
    |v| = 0). ``t_factor < 0``: (sign g_T, 0, 0); spatial shifts are frozen and a zero
    temporal gradient gives (0, 0, 0). Computed in float64, returned in grad's dtype.
    """
    if not isinstance(grad, torch.Tensor) or grad.dim() != 2 or grad.shape[0] != 3:
        got = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
        raise ValueError(f"grad must be a (3, C) shift gradient (T, H, W rows), got {got}")
    if not grad.is_floating_point():
        raise TypeError(f"grad must be a floating-point tensor, got {grad.dtype}")
    if not math.isfinite(t_factor):
        raise ValueError(f"t_factor must be finite, got {t_factor}")
    g = grad.to(torch.float64)
    if t_factor < 0:
        out = torch.zeros_like(g)
        out[0] = torch.sign(g[0])
        return out.to(grad.dtype)
    scale = torch.ones(g.shape[0], 1, dtype=g.dtype, device=g.device)
    scale[0] = t_factor
    v = g * scale
    norm = torch.linalg.vector_norm(v, dim=0, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm > 0, v / safe, v).to(grad.dtype)


def finish(raw: torch.Tensor, normalize: bool, t_factor: float) -> torch.Tensor:
    return normalize_shift_grad(raw, t_factor) if normalize else raw
