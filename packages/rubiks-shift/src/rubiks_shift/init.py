"""Initialisation modes for shift parameters (docs/spec.md §1.6)."""

from __future__ import annotations

import math
import re

import torch

__all__ = ["group_offsets", "init_spatial", "init_temporal"]

_TSM_NOISE = re.compile(r"^tsm-g(\d+(?:\.\d*)?(?:e-?\d+)?)$")
_GROUP = re.compile(r"^group(\d+)$")


@torch.no_grad()
def init_temporal(
    row: torch.Tensor, mode: str = "uniform", generator: torch.Generator | None = None
) -> None:
    """Fill a (C,) temporal-shift row in place.

    Modes: ``uniform`` (U[-1, 1]), ``zero``, ``tsm`` (first C/8 channels +1, next C/8
    -1, the rest 0), ``tsm-g<sigma>`` (tsm plus N(0, sigma^2) noise, e.g. ``tsm-g0.1``).
    """
    if mode == "uniform":
        row.copy_(torch.rand(row.shape, generator=generator, dtype=row.dtype) * 2 - 1)
        return
    if mode == "zero":
        row.zero_()
        return
    match = _TSM_NOISE.match(mode)
    if mode == "tsm" or match:
        fold = row.numel() // 8
        values = torch.zeros(row.shape, dtype=row.dtype)
        values[:fold] = 1
        values[fold : 2 * fold] = -1
        if match:
            sigma = float(match.group(1))
            if not math.isfinite(sigma):
                raise ValueError(f"temporal init mode {mode!r}: sigma must be finite")
            values += sigma * torch.randn(row.shape, generator=generator, dtype=row.dtype)
        row.copy_(values)
        return
    raise ValueError(
        f"unknown temporal init mode {mode!r}; use 'uniform', 'zero', 'tsm' or 'tsm-g<sigma>'"
    )


def group_offsets(channels: int, kernel: int) -> torch.Tensor:
    """(2, C) integer (h, w) offsets tiling a kernel x kernel neighbourhood.

    Channels are split into kernel**2 contiguous groups (sizes differ by at most one),
    the groups taking the offsets in row-major order, centred on (0, 0).
    """
    if kernel < 1:
        raise ValueError(f"group kernel size must be >= 1, got {kernel}")
    lo = -(kernel // 2)
    offsets = [(dh, dw) for dh in range(lo, lo + kernel) for dw in range(lo, lo + kernel)]
    index = torch.arange(channels) * len(offsets) // channels
    table = torch.tensor(offsets, dtype=torch.float64).T  # (2, K*K)
    return table[:, index]


@torch.no_grad()
def init_spatial(
    rows: torch.Tensor, mode: str = "uniform", generator: torch.Generator | None = None
) -> None:
    """Fill (2, C) spatial-shift rows (H, W) in place: ``uniform``, ``zero`` or ``group<K>``."""
    if mode == "uniform":
        rows.copy_(torch.rand(rows.shape, generator=generator, dtype=rows.dtype) * 2 - 1)
        return
    if mode == "zero":
        rows.zero_()
        return
    match = _GROUP.match(mode)
    if match:
        rows.copy_(group_offsets(rows.shape[1], int(match.group(1))).to(rows.dtype))
        return
    raise ValueError(f"unknown spatial init mode {mode!r}; use 'uniform', 'zero' or 'group<K>'")
