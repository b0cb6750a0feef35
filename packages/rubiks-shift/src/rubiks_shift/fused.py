"""Inference building block: batch norm + ReLU + RubiksShift in one pass.

In a RubiksNet block the shift reads ``relu(bn(conv(a)))``. With the batch norm folded to
a per-channel scale and bias, :func:`affine_relu_shift3d` applies that affine map and the
ReLU as the CUDA kernel reads each source value, so the activation is never written to
memory (one pass instead of three). :func:`affine_relu` is the same prologue with
nothing to shift (a batch norm + ReLU whose result a 1x1 convolution reads): one
elementwise pass, where a zero shift would take the gathers' walk. :func:`stem_conv` is
a RubiksNet's first layer, the 3x3 stride-2 convolution of 3-channel frames, in a kernel
of its own on CUDA. Inference only: none has a gradient.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence

import torch

from ._checks import (
    SUPPORTED_DTYPES,
    channel_major,
    check_affine,
    check_stem,
    remember,
    tensor_meta,
)
from ._ops import (
    _cuda_backend,
    _plain_eager,
    affine_relu_call,
    affine_shift3d_call,
    affine_shift_key,
    bind_once,
    bound_call,
    forward_key,
    stem_call,
)
from ._traceable import acc_dtype, affine_relu_shift3d_torch, affine_relu_torch, stem_torch
from .functional import _checked_3d, _validate_values, rubiks_shift3d

__all__ = [
    "COMPILE_AS_TORCH",
    "affine_relu",
    "affine_relu_shift3d",
    "call_and_bind",
    "is_channel_major",
    "stem_conv",
]

# Which inference ops torch.compile traces as plain torch (indexing and elementwise ops
# that Inductor fuses and lays out itself) instead of calling the registered op; eager
# calls always run the kernels. See rubiks_shift._traceable; why each default is what it
# is, measured, in BENCHMARKS.md ("Compiled code").
COMPILE_AS_TORCH: dict[str, bool] = {
    "affine_relu": True,  # fused into Inductor's layout copies: less GPU time, one call less
    "affine_relu_shift3d_quantized": False,  # compiling Large-AQ this way took minutes
    "affine_relu_shift3d_interpolated": False,  # Inductor's 8-read gathers: 2-5x slower
    "stem": False,  # Inductor calls cuDNN's convolution for it (not measured compiled)
}


def is_channel_major(x: torch.Tensor) -> bool:
    """Whether the (N, T, C, H, W) clip ``x`` is channel-major, the layout
    :func:`affine_relu_shift3d` keeps: a (C, N, T, H, W)-contiguous tensor seen through
    ``permute(1, 2, 0, 3, 4)``, and not also contiguous (as it can be where dimensions
    have size 1). Metadata only."""
    if x.dim() != 5:
        raise ValueError(f"is_channel_major: x must have rank 5 (N, T, C, H, W), got {x.dim()}")
    return channel_major(x)


def _in_acc_dtype(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A prologue's scale or bias in the dtype it is computed in: float64 for float64 x,
    else float32."""
    acc = acc_dtype(x)
    return t if t.dtype == acc else t.to(acc)


# Bound calls. An eager CUDA call of either op whose signature (every tensor's dtype,
# shape, strides and device, the other arguments, the host thread) passed the checks once
# gets a bound call (``_cuda.bind_affine`` / ``bind_affine_relu``): the output allocation
# and the launches made ready, so a later call of that signature computes its key, checks
# what can change between calls (gradient mode, compile and dispatch modes, the current
# device) and launches. Pointers are read at every call; nothing is kept but metadata.

_Tensor = torch.Tensor


def _records_grad(x: _Tensor, scale: _Tensor, bias: _Tensor, shift: _Tensor | None = None) -> bool:
    """Whether autograd would record this call (the ops refuse it: no gradient). Written
    out, not as ``any()`` over the tensors: half the host time on the bound-call path."""
    needs = x.requires_grad or scale.requires_grad or bias.requires_grad
    needs = needs or (shift is not None and shift.requires_grad)
    return needs and torch.is_grad_enabled()


def _bound_call(key: tuple | None, x, scale, bias, shift=None) -> Callable | None:
    """The bound call of ``key`` (``_shift_key`` / ``_prologue_key``) where this call may
    take it: no gradient to record, plain eager code (``_ops.bound_call`` checks the
    device)."""
    call = bound_call(key)
    if call is None or _records_grad(x, scale, bias, shift) or not _plain_eager():
        return None
    return call


def _bind(key: tuple | None, make: Callable[[], Callable | None]) -> None:
    """Remember ``make()`` as ``key``'s bound call after a call of that signature passed
    the checks (a call autograd would record raised before) in plain eager code."""
    if key is not None and _plain_eager():
        bind_once(key, make)


def _shift_key(x, scale, bias, shift, stride, padding, quantize) -> tuple | None:
    """The signature of an eager ``affine_relu_shift3d`` call that may have a bound call
    (``_ops.affine_shift_key``, the registered op's too)."""
    if torch.compiler.is_compiling() or type(x) is not _Tensor or not x.is_cuda:
        return None
    return affine_shift_key(x, scale, bias, shift, stride, padding, quantize)


def _prologue_key(x, scale, bias, frame_shift) -> tuple | None:
    """The signature of an ``affine_relu`` call that may have a bound call (x's address
    on a 4-byte boundary or not is part of it: bfloat16 moves as pairs where it is)."""
    if torch.compiler.is_compiling() or type(x) is not _Tensor or not x.is_cuda:
        return None
    try:
        shifted = None if frame_shift is None else tensor_meta(frame_shift)
        return (
            "affine_relu", x.shape, x.stride(), x.dtype, x.get_device(), tensor_meta(scale),
            tensor_meta(bias), shifted, x.data_ptr() % 4 == 0, threading.get_ident(),
        )  # fmt: skip
    except AttributeError:
        return None


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
    key = _shift_key(x, scale, bias, shift, stride, padding, quantize)
    call = _bound_call(key, x, scale, bias, shift)
    if call is not None:
        return call(x, scale, bias, shift)
    stride3, padding3, device_type = _checked_3d(x, shift, stride, padding, (scale, bias))
    if _records_grad(x, scale, bias, shift):
        raise RuntimeError(
            f"{_OP} is for inference and has no gradient; run it under torch.no_grad() or "
            "torch.inference_mode(), or use rubiks_shift3d(relu(...)) for training"
        )
    _validate_values(shift, _OP, device_type)
    form = "quantized" if quantize else "interpolated"
    if COMPILE_AS_TORCH[f"affine_relu_shift3d_{form}"] and torch.compiler.is_compiling():
        return affine_relu_shift3d_torch(x, scale, bias, shift, stride3, padding3, bool(quantize))
    y = affine_shift3d_call(
        x,
        _in_acc_dtype(x, scale),
        _in_acc_dtype(x, bias),
        shift,
        stride3,
        padding3,
        bool(quantize),
        device_type,
    )
    _bind(
        key, lambda: _cuda_backend().bind_affine(x, scale, bias, shift, stride3, padding3, quantize)
    )
    return y


_CHECKED_PROLOGUE: dict = {}  # signatures that passed affine_relu's checks -> device type


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


def _checked_prologue(x, scale, bias, frame_shift) -> str:
    """The device type of ``affine_relu``'s tensors after its metadata checks (a signature
    seen before skips them)."""
    args = (x, scale, bias) if frame_shift is None else (x, scale, bias, frame_shift)
    key = None
    # not in compiled code, which checks once per trace (a memo read there would become a
    # guard on the memo, and every signature added later a recompile)
    if all(isinstance(t, torch.Tensor) for t in args) and not torch.compiler.is_compiling():
        key = tuple((type(t), t.shape, t.dtype, t.device) for t in args)
        try:
            hit = _CHECKED_PROLOGUE.get(key)
        except TypeError:  # symbolic sizes (export, dynamic shapes) are not hashable
            key = hit = None
        if hit is not None:
            return hit
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"affine_relu: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"affine_relu: x must have rank 5 (N, T, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"affine_relu: unsupported dtype {x.dtype} for x; use one of {SUPPORTED_DTYPES}"
        )
    if x.numel() == 0:
        raise ValueError(f"affine_relu: x is empty (shape {tuple(x.shape)})")
    check_affine(x, scale, bias, op="affine_relu")
    if frame_shift is not None:
        _check_frame_shift(x, frame_shift)
    device_type = x.device.type
    return device_type if key is None else remember(_CHECKED_PROLOGUE, key, device_type)


def _check_frame_shift(x: torch.Tensor, frame_shift: object) -> None:
    if not isinstance(frame_shift, torch.Tensor):
        raise TypeError(
            f"affine_relu: frame_shift must be a tensor or None, got {type(frame_shift).__name__}"
        )
    if frame_shift.dtype not in _INT_DTYPES:
        raise TypeError(
            "affine_relu: frame_shift must be a signed integer tensor (whole frames), "
            f"got {frame_shift.dtype}"
        )
    if tuple(frame_shift.shape) != (x.shape[2],):
        raise ValueError(
            f"affine_relu: frame_shift must have shape (C,) = ({x.shape[2]},), "
            f"got {tuple(frame_shift.shape)}"
        )
    if frame_shift.device != x.device:
        raise ValueError(f"affine_relu: frame_shift is on {frame_shift.device}, x on {x.device}")


def affine_relu(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    frame_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(x * scale[c] + bias[c])`` over a clip in one pass, optionally with a whole-
    frame temporal shift per channel.

    Args:
        x: clip (N, T, C, H, W); float16, bfloat16, float32 or float64.
        scale, bias: (C,) per-channel affine map (a folded batch norm); computed in
            float32 (float64 for float64 x), the result rounded to x's dtype once.
        frame_shift: None, or (C,) integers on x's device: frame t of channel c is then
            computed from frame ``t + frame_shift[c]`` of x, and is 0 where that frame is
            outside the clip (the integer temporal shift of a hardened AQ block).

    Returns:
        A tensor of x's shape and dtype, channel-major where x is (see
        :func:`affine_relu_shift3d`), else contiguous; equal to
        ``affine_relu_shift3d(x, scale, bias, shift, quantize=True)`` with ``shift`` =
        (frame_shift, 0, 0) (zeros without one). No gradient (inference only). On CUDA
        one elementwise kernel, on the CPU a Numba one; elsewhere torch.
    """
    key = _prologue_key(x, scale, bias, frame_shift)
    call = _bound_call(key, x, scale, bias)
    if call is not None:
        return call(x, scale, bias, frame_shift)
    device_type = _checked_prologue(x, scale, bias, frame_shift)
    if _records_grad(x, scale, bias):
        raise RuntimeError(
            "affine_relu is for inference and has no gradient; run it under torch.no_grad() "
            "or torch.inference_mode(), or use torch.relu(x * scale + bias) for training"
        )
    frames = frame_shift  # what the call's signature has: bound only where it is int32
    if frames is not None and frames.dtype != torch.int32:
        # beyond +-T every frame reads outside the clip: clamping keeps the int32 exact
        # (int8 and int16 are within the bounds already, and cannot hold them)
        if frames.dtype == torch.int64:
            frames = frames.clamp(-(2**24), 2**24)
        frames = frames.to(torch.int32)
    if COMPILE_AS_TORCH["affine_relu"] and torch.compiler.is_compiling():
        return affine_relu_torch(x, scale, bias, frames)
    y = affine_relu_call(x, _in_acc_dtype(x, scale), _in_acc_dtype(x, bias), frames, device_type)
    _bind(key, lambda: _cuda_backend().bind_affine_relu(x, scale, bias, frame_shift))
    return y


def stem_conv(frames: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A RubiksNet's stem: the 3x3 convolution of stride 2 and padding 1, without bias,
    of 3-channel frames.

    Args:
        frames: (N, 3, H, W), H and W at least 1; float16, bfloat16, float32 or float64.
        weight: (C, 3, 3, 3) floating filters on the frames' device.

    Returns:
        (N, C, ceil(H / 2), ceil(W / 2)), contiguous, of the frames' dtype. On CUDA one
        kernel whose sums are in float32 (float64 for float64 frames), over the weights
        in that dtype, each value rounded once; elsewhere ``F.conv2d`` with the weights
        in the frames' dtype. No gradient (inference only).
    """
    if not isinstance(frames, torch.Tensor) or not isinstance(weight, torch.Tensor):
        bad = frames if not isinstance(frames, torch.Tensor) else weight
        raise TypeError(f"stem_conv: frames and weight must be tensors, got {type(bad).__name__}")
    check_stem(frames, weight)
    if (frames.requires_grad or weight.requires_grad) and torch.is_grad_enabled():
        raise RuntimeError(
            "stem_conv is for inference and has no gradient; run it under torch.no_grad() "
            "or torch.inference_mode(), or use F.conv2d(frames, weight, stride=2, "
            "padding=1) for training"
        )
    if COMPILE_AS_TORCH["stem"] and torch.compiler.is_compiling():
        return stem_torch(frames, weight)
    return stem_call(frames.contiguous(), _in_acc_dtype(frames, weight))


def _bound_key(op: Callable, args: tuple, kwargs: dict) -> tuple | None:
    """The bound-call key of ``op(*args, **kwargs)`` (the key the op itself computes)."""
    bound = inspect.signature(op).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if op is affine_relu:
        return _prologue_key(a["x"], a["scale"], a["bias"], a["frame_shift"])
    if op is affine_relu_shift3d:
        keyed = ("x", "scale", "bias", "shift", "stride", "padding", "quantize")
        return _shift_key(*(a[k] for k in keyed))
    keyed = ("x", "shift", "stride", "padding", "quantize", "normalize_grad", "normalize_t_factor")
    return forward_key(*(a[k] for k in keyed))


def _again(
    call: Callable[..., torch.Tensor], index: int, op: Callable, args: tuple, kwargs: dict
) -> Callable[..., torch.Tensor]:
    """``call`` with device ``index`` made current for it where another is; ``op`` itself
    (the tensors passed, the rest of ``args`` and ``kwargs``) once a new tuning has
    emptied the bound calls (``_cuda.use_tuning``)."""
    current = torch._C._cuda_getDevice
    backend = _cuda_backend()
    generation = backend.bound_generation

    def again(*tensors: torch.Tensor) -> torch.Tensor:
        if backend.bound_generation != generation:
            return op(*tensors, *args[len(tensors) :], **kwargs)
        if current() == index:
            return call(*tensors)
        with torch.cuda.device(index):
            return call(*tensors)

    return again


_BINDABLE = (affine_relu, affine_relu_shift3d, rubiks_shift3d)  # call_and_bind's ops


def call_and_bind(
    op: Callable[..., torch.Tensor], *args: object, **kwargs: object
) -> tuple[torch.Tensor, Callable[..., torch.Tensor] | None]:
    """``op(*args, **kwargs)``, and that call made ready to repeat without its checks.

    For callers that make the same call at every step with new tensors (a model's block):
    ``op`` is :func:`affine_relu`, :func:`affine_relu_shift3d` or
    :func:`rubiks_shift3d`. Returns ``(y, again)``: y as ``op`` returns it, and ``again``
    the op's launch for tensors like these, ``again(x, scale, bias, frame_shift)``,
    ``again(x, scale, bias, shift)`` or ``again(x, shift)`` (the other arguments are
    these), which skips the checks and the signature lookup of a call (a few µs of host
    time each). ``again`` is None where the call has no bound form: not an eager CUDA
    call with nothing for autograd to record, the CUDA simulator, or an argument the op
    converts.

    ``again`` checks nothing, so the caller keeps to what it was made for: tensors of the
    same dtypes, shapes, strides and devices as these (for ``affine_relu``, x on a 4-byte
    boundary where this x is), the same host thread, plain eager code (not compiled or
    transformed) with no gradient to record. It makes x's device current for its launch
    where another device is.
    """
    if op not in _BINDABLE:
        name = getattr(op, "__name__", type(op).__name__)
        names = tuple(f.__name__ for f in _BINDABLE)
        raise TypeError(f"call_and_bind: op must be one of {names}, got {name}")
    y = op(*args, **kwargs)
    if not _plain_eager():
        return y, None
    key = _bound_key(op, args, kwargs)
    call = None if key is None else _cuda_backend().BOUND.get(key)
    return y, None if call is None else _again(call, key[4], op, args, kwargs)
