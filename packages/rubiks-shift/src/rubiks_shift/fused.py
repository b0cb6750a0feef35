"""Inference building block: batch norm + ReLU + RubiksShift in one pass.

In a RubiksNet block the shift reads ``relu(bn(conv(a)))``. With the batch norm folded to
a per-channel scale and bias, :func:`affine_relu_shift3d` applies that affine map and the
ReLU as the CUDA kernel reads each source value, so the activation is never written to
memory (one pass instead of three). With a zero shift and ``quantize=True`` it is a plain
per-channel affine + ReLU. Inference only: it has no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import channel_major
from ._ops import affine_shift3d_call
from .functional import _checked_3d, _validate_values

__all__ = ["affine_relu_shift3d", "is_channel_major"]


def is_channel_major(x: torch.Tensor) -> bool:
    """Whether the (N, T, C, H, W) clip ``x`` is channel-major, the layout
    :func:`affine_relu_shift3d` keeps: a (C, N, T, H, W)-contiguous tensor seen through
    ``permute(1, 2, 0, 3, 4)``, and not also contiguous (as it can be where dimensions
    have size 1). Metadata only."""
    if x.dim() != 5:
        raise ValueError(f"is_channel_major: x must have rank 5 (N, T, C, H, W), got {x.dim()}")
    return channel_major(x)


_OP = "affine_relu_shift3d"


def affine_relu_shift3d(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    shift: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    *,
    quantize: bool = False,
) -> torch.Tensor:
    """``rubiks_shift3d(relu(x * scale[c] + bias[c]), shift, stride, padding)`` in one pass.

    Args:
        x: clip (N, T, C, H, W); float16, bfloat16, float32 or float64.
        scale, bias: (C,) per-channel affine map (a folded batch norm); computed in
            float32 (float64 for float64 x), the result rounded to x's dtype once.
        shift, stride, padding, quantize: as in :func:`rubiks_shift.rubiks_shift3d`.

    Returns:
        (N, T_out, C, H_out, W_out) tensor of x's dtype. No gradient (inference only).
        Channel-major where x is (a (C, N, T, H, W) contiguous tensor seen through
        ``permute(1, 2, 0, 3, 4)``: each channel's frames side by side, so the 1x1
        convolutions around the shift are single matrix products), else contiguous.
    """
    stride3, padding3, device_type = _checked_3d(x, shift, stride, padding, (scale, bias))
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or bias.requires_grad):
        raise RuntimeError(
            f"{_OP} is for inference and has no gradient; run it under torch.no_grad() or "
            "torch.inference_mode(), or use rubiks_shift3d(relu(...)) for training"
        )
    _validate_values(shift, _OP, device_type)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if scale.dtype != acc:
        scale = scale.to(acc)
    if bias.dtype != acc:
        bias = bias.to(acc)
    return affine_shift3d_call(
        x, scale, bias, shift, stride3, padding3, bool(quantize), device_type
    )
