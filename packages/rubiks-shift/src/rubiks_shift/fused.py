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

from ._checks import channel_major, check_shift3d_args, triple
from ._ops import affine_shift3d_call
from .functional import _plain_ints, _validate_values

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


def _check_affine(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> None:
    """Refuse a scale or bias that is not a floating (C,) tensor on x's device."""
    op = _OP
    channels = x.shape[2]
    for name, t in (("scale", scale), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != (channels,):
            raise ValueError(
                f"{op}: {name} must have shape (C,) = ({channels},), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


_CHECKED: dict = {}  # call signatures that passed the metadata checks -> (stride, padding)


def _checked(x, scale, bias, shift, stride, padding) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Normalised (stride, padding) after the metadata checks of every argument. The checks
    read only metadata, so a signature seen before skips them (the host time per call is
    what an eager network of small layers waits on)."""
    key = None
    tensor = torch.Tensor
    plain = type(x) is tensor and type(scale) is tensor and type(bias) is tensor
    if plain and type(shift) is tensor and _plain_ints(stride) and _plain_ints(padding):
        key = (
            stride,
            padding,
            x.shape,
            x.dtype,
            x.device,
            shift.shape,
            shift.dtype,
            shift.device,
            scale.shape,
            scale.dtype,
            scale.device,
            bias.shape,
            bias.dtype,
            bias.device,
        )
        hit = _CHECKED.get(key)
        if hit is not None:
            return hit
    stride3 = triple(stride, "stride")
    padding3 = triple(padding, "padding")
    check_shift3d_args(x, shift, stride3, padding3, op=_OP)
    _check_affine(x, scale, bias)
    if key is not None:
        if len(_CHECKED) >= 1024:
            _CHECKED.clear()
        _CHECKED[key] = (stride3, padding3)
    return stride3, padding3


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
    stride3, padding3 = _checked(x, scale, bias, shift, stride, padding)
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or bias.requires_grad):
        raise RuntimeError(
            f"{_OP} is for inference and has no gradient; run it under torch.no_grad() or "
            "torch.inference_mode(), or use rubiks_shift3d(relu(...)) for training"
        )
    device_type = x.device.type
    _validate_values(shift, _OP, device_type)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if scale.dtype != acc:
        scale = scale.to(acc)
    if bias.dtype != acc:
        bias = bias.to(acc)
    return affine_shift3d_call(
        x, scale, bias, shift, stride3, padding3, bool(quantize), device_type
    )
