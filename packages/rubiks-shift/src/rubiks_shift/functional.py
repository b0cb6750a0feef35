"""Functional form of the RubiksShift operator (docs/spec.md §1)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch._subclasses.fake_tensor import is_fake

from ._checks import check_affine, check_finite_shift, check_shift3d_args, remember, triple
from ._ops import _cuda_backend, bind_once, bound_call, forward_key, shift3d_call

__all__ = ["rubiks_shift2d", "rubiks_shift3d"]


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # never fake tensors: no need to ask ``is_fake``


def _validate_values(shift: torch.Tensor, op: str, device_type: str | None = None) -> None:
    # A per-call finiteness check is free on the CPU; on an accelerator it would sync the
    # device (and break CUDA-graph capture), so there non-finite shifts are handled by
    # the kernels (NaN -> NaN output for that channel, +-inf -> shifted out, zeros) and
    # reported by rubiks_shift.check_shift / module loading instead; fake tensors (shape
    # propagation) have no values to check. ``device_type``: shift's, where the caller
    # knows it.
    if (
        (device_type or shift.device.type) == "cpu"
        and not torch.compiler.is_compiling()
        and (type(shift) in _PLAIN or not is_fake(shift))
    ):
        check_finite_shift(shift, op)


_CHECKED: dict = {}  # signatures that passed the metadata checks -> (stride, padding, device)


def _plain_ints(value) -> bool:
    return type(value) is int or (type(value) is tuple and all(type(v) is int for v in value))


def _checked_3d(
    x, shift, stride, padding, affine: tuple | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Normalised (stride, padding) after the docs/spec.md §1.7 checks, and the device type of
    both tensors; ``affine``: the (scale, bias) of ``affine_relu_shift3d``, checked too.
    The checks depend only on metadata: a signature seen before skips them (a few µs of
    the host time per call)."""
    # compiled code checks once per trace: a memo read there would become a guard on the
    # memo, and every signature added later (by any call) a recompile
    cacheable = (
        isinstance(x, torch.Tensor)
        and isinstance(shift, torch.Tensor)
        and not torch.compiler.is_compiling()
    )
    key = hit = None  # bools/floats compare equal to ints: only exact ints are cached
    if cacheable and _plain_ints(stride) and _plain_ints(padding):
        key = (
            type(x),
            type(shift),
            x.shape,
            x.dtype,
            x.device,
            shift.shape,
            shift.dtype,
            shift.device,
            stride,
            padding,
        )
        if affine is not None:
            scale, bias = affine
            if isinstance(scale, torch.Tensor) and isinstance(bias, torch.Tensor):
                key += (type(scale), scale.shape, scale.dtype, scale.device)
                key += (type(bias), bias.shape, bias.dtype, bias.device)
            else:
                key = None
        if key is not None:
            try:
                hit = _CHECKED.get(key)
            except TypeError:  # symbolic sizes (export, dynamic shapes) are not hashable
                key = None
    if hit is not None:
        return hit
    stride3 = triple(stride, "stride")
    padding3 = triple(padding, "padding")
    if affine is None:
        check_shift3d_args(x, shift, stride3, padding3)
    else:
        check_shift3d_args(x, shift, stride3, padding3, op="affine_relu_shift3d")
        check_affine(x, *affine)
    checked = (stride3, padding3, x.device.type)
    return checked if key is None else remember(_CHECKED, key, checked)


def check_t_factor(value: float | str) -> None:
    """Raise unless ``value`` is a finite number or ``"auto"`` (a NaN or infinite factor
    would turn every normalised shift gradient into NaN)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"normalize_t_factor must be a number or 'auto', got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"normalize_t_factor must be a number or 'auto', got {type(value).__name__}"
        )
    if not value - value == 0:  # NaN or +-inf; unlike math.isfinite, traceable for a
        # float torch.compile(dynamic=True) makes symbolic
        raise ValueError(f"normalize_t_factor must be finite, got {value!r}")


def _t_factor(value: float | str, x: torch.Tensor) -> float:
    check_t_factor(value)
    if isinstance(value, str):
        return x.shape[1] / x.shape[3]
    return float(value)


def rubiks_shift3d(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    *,
    quantize: bool = False,
    normalize_grad: bool = True,
    normalize_t_factor: float | str = 1.0,
) -> torch.Tensor:
    """Shift every channel of a clip by its own learnable 3-D offset.

    Args:
        x: clip of shape (N, T, C, H, W); float16, bfloat16, float32 or float64.
        shift: (3, C) shifts in rows T, H, W; ``y[t] ~ x[t + s]`` with trilinear
            interpolation and zeros outside the clip.
        stride, padding: int or (T, H, W) tuple; the output length per dimension is
            ``(L + 2p - 1) // stride + 1``.
        quantize: round shifts half up and gather (no interpolation); the shift
            gradient is the interpolated one at the continuous shift (straight-through).
        normalize_grad: replace the (3, C) shift gradient by a unit vector per channel.
        normalize_t_factor: weight of the temporal row in that normalisation; negative
            freezes spatial shifts; ``"auto"`` uses T / H of ``x``.

    Returns:
        (N, T_out, C, H_out, W_out) tensor of x's dtype, channel-major where x is
        (``is_channel_major``), else contiguous (other layouts are copied).
    """
    # an eager CUDA call with nothing to record whose signature passed the checks once
    # launches through its bound call (``_cuda.bind_forward``): a few µs of host time less
    key = forward_key(x, shift, stride, padding, quantize, normalize_grad, normalize_t_factor)
    call = bound_call(key)
    if call is not None:
        return call(x, shift)
    stride3, padding3, device_type = _checked_3d(x, shift, stride, padding)
    factor = _t_factor(normalize_t_factor, x)
    _validate_values(shift, "rubiks_shift3d", device_type)
    y = shift3d_call(
        x, shift, stride3, padding3, bool(quantize), bool(normalize_grad), factor, device_type
    )
    if key is not None:
        bind_once(key, lambda: _cuda_backend().bind_forward(x, shift, stride3, padding3, quantize))
    return y


def rubiks_shift2d(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    *,
    quantize: bool = False,
    normalize_grad: bool = True,
) -> torch.Tensor:
    """Spatial RubiksShift of images: x (N, C, H, W), shift (2, C) in rows H, W.

    The 3-D op with T = 1 and no temporal row; gradient normalisation acts on (g_H, g_W).
    """
    stride2 = triple(stride, "stride", 2)
    padding2 = triple(padding, "padding", 2)
    check_shift3d_args(x, shift, (1, *stride2), (0, *padding2), rows=2, op="rubiks_shift2d")
    _validate_values(shift, "rubiks_shift2d")
    # With T = 1 and a zero temporal shift the temporal gradient is exactly 0 (the central
    # difference reads only outside the clip), so normalising (0, g_H, g_W) with any
    # factor is the 2-D rule.
    shift3 = torch.cat([shift.new_zeros(1, shift.shape[1]), shift], dim=0)
    y = shift3d_call(
        x.unsqueeze(1),
        shift3,
        [1, *stride2],
        [0, *padding2],
        bool(quantize),
        bool(normalize_grad),
        1.0,
    )
    return y.squeeze(1)


def check_shift(shift: torch.Tensor) -> None:
    """Raise ValueError if ``shift`` has NaN or infinite values (syncs a CUDA device)."""
    if not isinstance(shift, torch.Tensor):
        raise TypeError(
            f"check_shift: shift must be a tensor (a layer's .shift), got {type(shift).__name__}"
        )
    check_finite_shift(shift, "check_shift")
