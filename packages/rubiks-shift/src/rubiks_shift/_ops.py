"""torch.library registration of the RubiksShift operator and the inference ops.

Two custom ops carry the shift's computation:

* ``rubiks_shift::shift3d(x, shift, stride, padding, quantize, normalize_grad,
  normalize_t_factor) -> y``
* ``rubiks_shift::shift3d_backward(grad_y, x, shift, stride, padding, quantize,
  normalize_grad, normalize_t_factor, need_x, need_shift) -> (grad_x, grad_shift)``

and three the fused inference form's (``rubiks_shift.fused``), without gradients:
``rubiks_shift::affine_relu_shift3d(x, scale, bias, shift, stride, padding, quantize)``,
``rubiks_shift::affine_relu(x, scale, bias, frame_shift=None)`` and
``rubiks_shift::stem(frames, weight)`` (torch's convolution off CUDA).

Each has a CPU kernel (Numba; torch for ``affine_relu``), a CUDA kernel (Numba-CUDA), a
default kernel for other devices (the float64 reference) and a fake kernel for tracing;
``shift3d`` has an autograd formula and autocast rules. Every kernel checks its tensors'
shapes and devices first (``_checks.check_op_call``): called directly, an op has no
public function in front of it. The device kernels sit at the dispatcher's backend and
autograd keys directly (``_dispatch``), past the custom op's Python wrappers. The 2-D op
is expressed through the 3-D one.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from . import _cpu, _dispatch, _normalize, reference
from ._checks import (
    check_grad_y,
    check_op_call,
    check_stem,
    empty_like_layout,
    in_layout_of,
    output_shape,
    remember,
    tensor_meta,
)
from ._traceable import shift_frames, stem_torch

_cuda = None


def _cuda_backend():
    global _cuda
    if _cuda is None:
        from . import _cuda as backend  # imports numba.cuda: only on first CUDA use

        _cuda = backend
    return _cuda


_SHIFT3D = "rubiks_shift::shift3d"
_BACKWARD = "rubiks_shift::shift3d_backward"
_AFFINE = "rubiks_shift::affine_relu_shift3d"
_PROLOGUE = "rubiks_shift::affine_relu"


def _check_backward(grad_y: Tensor, x: Tensor, shift: Tensor, stride, padding) -> None:
    check_op_call(_BACKWARD, x, shift, stride, padding)
    check_grad_y(grad_y, x, stride, padding, _BACKWARD)


def _per_channel(scale: Tensor, bias: Tensor, frame_shift: Tensor | None) -> tuple:
    return (scale, bias) if frame_shift is None else (scale, bias, frame_shift)


# ---------------------------------------------------------------------------- forward


@torch.library.custom_op("rubiks_shift::shift3d", mutates_args=())
def shift3d(
    x: Tensor,
    shift: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    normalize_grad: bool,
    normalize_t_factor: float,
) -> Tensor:
    """Default kernel (devices without a dedicated one): the float64 reference."""
    check_op_call(_SHIFT3D, x, shift, stride, padding)
    y = reference.shift3d_forward(x, shift, stride, padding, quantize)
    return in_layout_of(y.to(device=x.device, dtype=x.dtype), x)


def _shift3d_cpu(x, shift, stride, padding, quantize, normalize_grad, normalize_t_factor):
    check_op_call(_SHIFT3D, x, shift, stride, padding)
    if not _cpu.available():
        y = reference.shift3d_forward(x, shift, stride, padding, quantize)
        return in_layout_of(y.to(x.dtype), x)
    return _cpu.forward(x, shift, stride, padding, quantize)


def _shift3d_cuda(x, shift, stride, padding, quantize, normalize_grad, normalize_t_factor):
    check_op_call(_SHIFT3D, x, shift, stride, padding)
    return _cuda_backend().forward(x, shift, stride, padding, quantize)


@shift3d.register_fake
def _shift3d_fake(x, shift, stride, padding, quantize, normalize_grad, normalize_t_factor):
    check_op_call(_SHIFT3D, x, shift, stride, padding)
    return empty_like_layout(x, output_shape(x.shape, stride, padding))


# --------------------------------------------------------------------------- backward


@torch.library.custom_op("rubiks_shift::shift3d_backward", mutates_args=())
def shift3d_backward(
    grad_y: Tensor,
    x: Tensor,
    shift: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    normalize_grad: bool,
    normalize_t_factor: float,
    need_x: bool,
    need_shift: bool,
) -> tuple[Tensor, Tensor]:
    """Default kernel: the float64 reference. Unrequested outputs are empty tensors."""
    _check_backward(grad_y, x, shift, stride, padding)
    gx, gs = reference.shift3d_backward(grad_y, x, shift, stride, padding, quantize)
    gx = in_layout_of(gx.to(device=x.device, dtype=x.dtype), x) if need_x else x.new_empty(0)
    if need_shift:
        gs = _normalize.finish(gs, normalize_grad, normalize_t_factor)
        gs = gs.to(device=shift.device, dtype=shift.dtype)
    else:
        gs = shift.new_empty(0)
    return gx, gs


def _backward_cpu(
    grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
):
    _check_backward(grad_y, x, shift, stride, padding)
    if not _cpu.available():
        return shift3d_backward._init_fn(
            grad_y,
            x,
            shift,
            stride,
            padding,
            quantize,
            normalize_grad,
            t_factor,
            need_x,
            need_shift,
        )
    return _cpu.backward(
        grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
    )


def _backward_cuda(
    grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
):
    _check_backward(grad_y, x, shift, stride, padding)
    return _cuda_backend().backward(
        grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
    )


@shift3d_backward.register_fake
def _backward_fake(
    grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
):
    _check_backward(grad_y, x, shift, stride, padding)
    gx = empty_like_layout(x, x.shape) if need_x else x.new_empty(0)
    gs = shift.new_empty(shift.shape) if need_shift else shift.new_empty(0)
    return gx, gs


# --------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs, output):
    x, shift, stride, padding, quantize, normalize_grad, t_factor = inputs
    ctx.save_for_backward(x, shift)
    ctx.config = (stride, padding, quantize, normalize_grad, t_factor)


def _input_grads(ctx, grad_y, backward, first: int = 0):
    """Autograd's 7 input gradients from ``backward`` (the registered backward op or a
    backend's ``backward``), computing only what the inputs need; x is the node's input
    number ``first``."""
    x, shift = ctx.saved_tensors
    stride, padding, quantize, normalize_grad, t_factor = ctx.config
    need_x, need_shift = ctx.needs_input_grad[first], ctx.needs_input_grad[first + 1]
    if not (need_x or need_shift):
        return (None,) * 7
    grad_x, grad_shift = backward(
        grad_y, x, shift, stride, padding, quantize, normalize_grad, t_factor, need_x, need_shift
    )
    return (grad_x if need_x else None, grad_shift if need_shift else None) + (None,) * 5


def _backward(ctx, grad_y, first: int = 0):
    return _input_grads(ctx, grad_y, shift3d_backward, first)


shift3d.register_autograd(_backward, setup_context=_setup_context)


class _DispatchedShift3d(torch.autograd.Function):
    """shift3d's autograd node where the dispatcher runs it with an input that needs a
    gradient (compiled or traced code, ``torch.ops`` calls): the formula above, its
    forward the kernel below autograd."""

    @staticmethod
    def forward(ctx, keyset, *args):
        _setup_context(ctx, args, None)
        return _dispatch.redispatch(torch.ops.rubiks_shift.shift3d.default, keyset, args)

    @staticmethod
    def backward(ctx, grad_y):
        return (None, *_backward(ctx, grad_y, first=1))


_dispatch.register(
    torch.ops.rubiks_shift.shift3d.default,
    {"cpu": _shift3d_cpu, "cuda": _shift3d_cuda},
    _DispatchedShift3d.apply,
)
_dispatch.register(
    torch.ops.rubiks_shift.shift3d_backward.default,
    {"cpu": _backward_cpu, "cuda": _backward_cuda},
)


# --------------------------------------------------------------------------- autocast

_autocast_lib = torch.library.Library("rubiks_shift", "IMPL")


def _register_autocast(device_type: str) -> None:
    """Under autocast run the shift in the autocast dtype (it is memory-bound, so the
    narrower type is faster) but keep the shift parameters in their own precision."""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    dispatch_key = getattr(torch._C.DispatchKey, key)

    def kernel(_keyset, x, shift, stride, padding, quantize, normalize_grad, t_factor):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            dtype = torch.get_autocast_dtype(device_type)
            if x.is_floating_point() and x.dtype != torch.float64 and x.device.type == device_type:
                x = x.to(dtype)
            return torch.ops.rubiks_shift.shift3d.default(
                x, shift, stride, padding, quantize, normalize_grad, t_factor
            )

    _autocast_lib.impl("shift3d", kernel, key, with_keyset=True)


for _device in ("cpu", "cuda"):
    _register_autocast(_device)


# ----------------------------------------------------------------- eager fast path


def eager_backend(x: Tensor):
    """The backend module for a plain eager call on ``x``'s device, or None."""
    return _backend_for(x.device.type)


def _backend_for(device_type: str):
    if device_type == "cuda":
        return _cuda_backend()
    if device_type == "cpu" and _cpu.available():
        return _cpu
    return None


class EagerShift3d(torch.autograd.Function):
    """The same kernels as ``torch.ops.rubiks_shift.shift3d``, called without the
    dispatcher round trip (3-6 µs of host time per call on the H200 machine: the
    schema's argument conversion and a Python kernel entered from C++).
    Used only for plain tensors in eager mode; tracing, compiling, export, functorch
    transforms and dispatch modes all take the registered op."""

    @staticmethod
    def forward(ctx, x, shift, stride, padding, quantize, normalize_grad, t_factor):
        backend = eager_backend(x)
        ctx.backend = backend
        ctx.config = (stride, padding, quantize, normalize_grad, t_factor)
        ctx.save_for_backward(x, shift)
        return backend.forward(x, shift, stride, padding, quantize)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        return _input_grads(ctx, grad_y, ctx.backend.backward)


def unwrapped_apply(function: type[torch.autograd.Function]):
    """(``function.apply`` below torch's Python-level wrapper, ``unwrap_if_dead``) where
    torch has that wrapper (torch <= 2.13: default-argument binding and a pytree pass over
    the arguments to unwrap dead functorch wrappers, ~10 us per call), else None. The
    caller unwraps its tensors itself; only for calls with no functorch transform
    active (see ``shift3d_call``)."""
    wrapper = inspect.getattr_static(torch.autograd.Function, "apply", None)
    base = torch._C._FunctionBase.__dict__.get("apply")
    unwrap = getattr(torch._C._functorch, "unwrap_if_dead", None)
    if not isinstance(wrapper, classmethod) or base is None or unwrap is None:
        return None
    return base.__get__(None, function), unwrap


def _eager_apply():
    """``EagerShift3d.apply``, the two tensors unwrapped directly (``unwrapped_apply``)."""
    direct = unwrapped_apply(EagerShift3d)
    if direct is None:
        return EagerShift3d.apply
    bound, unwrap = direct

    def apply(x, shift, *config):
        return bound(unwrap(x), unwrap(shift), *config)

    return apply


_apply = _eager_apply()


def _plain_eager() -> bool:
    """Whether a call is plain eager PyTorch (no compile, functorch transform, dispatch or
    function mode): the backends may then be called directly, skipping the dispatcher."""
    return (
        not torch.compiler.is_compiling()
        and _forward_ad._current_level < 0  # no forward-mode AD level open
        and not torch._C._are_functorch_transforms_active()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
    )


def shift3d_call(
    x: Tensor,
    shift: Tensor,
    stride,
    padding,
    quantize,
    normalize_grad,
    t_factor,
    device_type: str | None = None,
):
    """Run the op: the eager fast path when it is equivalent, the registered op otherwise.
    ``stride`` and ``padding`` are int sequences of three (lists for the registered op);
    ``device_type``: x's, where the caller knows it (reading it costs a device object)."""
    if (
        type(x) is Tensor
        and (type(shift) is Tensor or type(shift) is torch.nn.Parameter)
        and _plain_eager()
    ):
        device_type = device_type or x.device.type  # a device object per call: read once
        backend = _backend_for(device_type)
        if backend is not None:
            if torch.is_autocast_enabled(device_type) and x.dtype != torch.float64:
                x = x.to(torch.get_autocast_dtype(device_type))
            if torch.is_grad_enabled() and (x.requires_grad or shift.requires_grad):
                return _apply(x, shift, stride, padding, quantize, normalize_grad, t_factor)
            return backend.forward(x, shift, stride, padding, quantize)  # nothing to record
    return torch.ops.rubiks_shift.shift3d(
        x, shift, list(stride), list(padding), quantize, normalize_grad, t_factor
    )


# ------------------------------------------------------ affine + ReLU + shift (inference)


def _affine_relu(x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """relu(x * scale[c] + bias[c]) of a (N, T, C, H, W) clip, in scale's dtype (the
    precision the CUDA prologue computes in), written in the layout the ops return for x
    (channel-major where x is, else contiguous)."""
    view = (1, 1, -1, 1, 1)
    out = empty_like_layout(x, x.shape, scale.dtype)
    return torch.addcmul(bias.view(view), x.to(scale.dtype), scale.view(view), out=out).relu_()


@torch.library.custom_op("rubiks_shift::affine_relu_shift3d", mutates_args=())
def affine_relu_shift3d(
    x: Tensor,
    scale: Tensor,
    bias: Tensor,
    shift: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> Tensor:
    """Default kernel (devices without a dedicated one): the float64 reference."""
    check_op_call(_AFFINE, x, shift, stride, padding, (scale, bias))
    a = _affine_relu(x, scale, bias)
    y = reference.shift3d_forward(a, shift, stride, padding, quantize)
    return in_layout_of(y.to(device=x.device, dtype=x.dtype), x)


def _affine_cpu(x, scale, bias, shift, stride, padding, quantize):
    check_op_call(_AFFINE, x, shift, stride, padding, (scale, bias))
    if _cpu.available():  # the affine map inside the kernel, in x's layout
        return _cpu.forward(x, shift, stride, padding, quantize, scale, bias)
    a = _affine_relu(x, scale, bias)
    y = reference.shift3d_forward(a, shift, stride, padding, quantize)
    return in_layout_of(y.to(x.dtype), x)


def _int_or_triple(v: object) -> bool:
    """Whether ``v`` is an int or a tuple of three ints (bools are not: they hash and
    compare as ints, so a key holding one would match an int's)."""
    if type(v) is int:
        return True
    if type(v) is not tuple or len(v) != 3:
        return False
    return type(v[0]) is int and type(v[1]) is int and type(v[2]) is int


def affine_shift_key(x, scale, bias, shift, stride, padding, quantize) -> tuple | None:
    """The signature of an ``affine_relu_shift3d`` call (public or registered): everything
    its checks and its launches depend on; the key of its bound call in
    ``_cuda.BOUND``. None where an argument is not of a kind a key holds."""
    if not (_int_or_triple(stride) and _int_or_triple(padding)) or type(quantize) is not bool:
        return None
    try:
        return (
            _AFFINE, x.shape, x.stride(), x.dtype, x.get_device(), tensor_meta(scale),
            tensor_meta(bias), tensor_meta(shift), stride, padding, quantize,
            threading.get_ident(),
        )  # fmt: skip
    except AttributeError:  # not tensors: the checks say so
        return None


def forward_key(x, shift, stride, padding, quantize, normalize_grad, t_factor) -> tuple | None:
    """The signature of an eager ``rubiks_shift3d`` call that may take a bound call (CUDA,
    plain eager code, nothing for autograd to record, autocast off): everything its checks
    and its launches depend on; the key of its bound call in ``_cuda.BOUND``. None where
    the call may not take one or an argument is not of a kind a key holds."""
    if type(x) is not Tensor or not x.is_cuda:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or shift.requires_grad):
        return None
    if torch.is_autocast_enabled("cuda") or not _plain_eager():
        return None
    if not (_int_or_triple(stride) and _int_or_triple(padding)):
        return None
    if type(quantize) is not bool or type(normalize_grad) is not bool:
        return None
    if type(t_factor) is not float and type(t_factor) is not int and type(t_factor) is not str:
        return None
    try:
        return (
            _SHIFT3D, x.shape, x.stride(), x.dtype, x.get_device(), tensor_meta(shift), stride,
            padding, quantize, normalize_grad, t_factor, threading.get_ident(),
        )  # fmt: skip
    except AttributeError:  # shift is not a tensor: the checks say so
        return None


def bound_call(key: tuple | None) -> Callable | None:
    """The bound call of a signature ``key`` (``affine_shift_key`` or ``rubiks_shift.fused``'s
    prologue key: x's device index at position 4) in ``_cuda.BOUND``, where the current
    CUDA device is the key's; else None."""
    if key is None:
        return None
    call = _cuda_backend().BOUND.get(key)
    if call is None or torch._C._cuda_getDevice() != key[4]:
        return None
    return call


def bind_once(key: tuple | None, make: Callable[[], Callable | None]) -> None:
    """Remember ``make()`` as ``key``'s bound call (None: the signature has none) unless
    ``key`` already has an entry; call it after a call of that signature passed the checks."""
    bound = _cuda_backend().BOUND
    if key is not None and bound.get(key, False) is False:
        remember(bound, key, make())


def _affine_cuda(x, scale, bias, shift, stride, padding, quantize):
    # What compiled code calls, once per block and forward: a signature that passed the
    # check once launches through a bound call (``_cuda.bind_affine``), under the same key
    # as eager calls (``rubiks_shift.fused``), so a new tuning unbinds both.
    key = affine_shift_key(x, scale, bias, shift, tuple(stride), tuple(padding), quantize)
    call = bound_call(key)
    if call is not None:
        return call(x, scale, bias, shift)
    check_op_call(_AFFINE, x, shift, stride, padding, (scale, bias))
    y = _cuda_backend().forward_affine(x, scale, bias, shift, stride, padding, quantize)
    bind_once(
        key, lambda: _cuda_backend().bind_affine(x, scale, bias, shift, stride, padding, quantize)
    )
    return y


@affine_relu_shift3d.register_fake
def _affine_fake(x, scale, bias, shift, stride, padding, quantize):
    check_op_call(_AFFINE, x, shift, stride, padding, (scale, bias))
    return empty_like_layout(x, output_shape(x.shape, stride, padding))


_dispatch.register(
    torch.ops.rubiks_shift.affine_relu_shift3d.default, {"cpu": _affine_cpu, "cuda": _affine_cuda}
)


def affine_shift3d_call(x, scale, bias, shift, stride, padding, quantize, device_type):
    """Run the affine op: the backend directly for plain tensors in eager mode (no
    dispatcher round trip), the registered op otherwise."""
    if type(x) is Tensor and _plain_eager():
        if device_type == "cuda":
            return _cuda_backend().forward_affine(x, scale, bias, shift, stride, padding, quantize)
        if device_type == "cpu":
            return _affine_cpu(x, scale, bias, shift, stride, padding, quantize)
    return torch.ops.rubiks_shift.affine_relu_shift3d(
        x, scale, bias, shift, list(stride), list(padding), quantize
    )


# ------------------------------------------------------------ affine + ReLU (inference)


def _affine_relu_cpu(x, scale, bias, frame_shift=None):
    check_op_call(_PROLOGUE, x, per_channel=_per_channel(scale, bias, frame_shift))
    if x.device.type == "cpu" and _cpu.available() and _cpu.computes_affine_in(scale, bias):
        return _cpu.affine_relu(x, scale, bias, frame_shift)  # one pass, in x's layout
    y = _affine_relu(x, scale, bias)
    if frame_shift is not None:
        y = shift_frames(y, frame_shift)
    return in_layout_of(y.to(x.dtype), x)


@torch.library.custom_op("rubiks_shift::affine_relu", mutates_args=())
def affine_relu(
    x: Tensor, scale: Tensor, bias: Tensor, frame_shift: Tensor | None = None
) -> Tensor:
    """Default kernel (devices without a dedicated one): torch, in scale's dtype."""
    return _affine_relu_cpu(x, scale, bias, frame_shift)


def _affine_relu_cuda(x, scale, bias, frame_shift=None):
    check_op_call(_PROLOGUE, x, per_channel=_per_channel(scale, bias, frame_shift))
    return _cuda_backend().affine_relu(x, scale, bias, frame_shift)


@affine_relu.register_fake
def _affine_relu_fake(x, scale, bias, frame_shift=None):
    check_op_call(_PROLOGUE, x, per_channel=_per_channel(scale, bias, frame_shift))
    return empty_like_layout(x, x.shape)


_dispatch.register(
    torch.ops.rubiks_shift.affine_relu.default, {"cpu": _affine_relu_cpu, "cuda": _affine_relu_cuda}
)


def affine_relu_call(
    x: Tensor, scale: Tensor, bias: Tensor, frame_shift: Tensor | None, device_type: str
) -> Tensor:
    """Run the affine + ReLU op: the CUDA backend directly for plain tensors in eager mode
    (no dispatcher round trip), the registered op otherwise."""
    if device_type == "cuda" and type(x) is Tensor and _plain_eager():
        return _cuda_backend().affine_relu(x, scale, bias, frame_shift)
    return torch.ops.rubiks_shift.affine_relu(x, scale, bias, frame_shift)


# ------------------------------------------------------------------- the stem (inference)


_STEM_OP = "rubiks_shift::stem"


def _stem_torch(frames, weight):
    check_stem(frames, weight, _STEM_OP)
    # in the frames' dtype under autocast too, and contiguous (torch's convolution keeps
    # channels-last frames or filters channels-last), as the CUDA kernel's and the fake's
    device_type = frames.device.type
    if not torch.amp.is_autocast_available(device_type):
        return stem_torch(frames, weight).contiguous()
    with torch.autocast(device_type, enabled=False):
        return stem_torch(frames, weight).contiguous()


@torch.library.custom_op(_STEM_OP, mutates_args=())
def stem(frames: Tensor, weight: Tensor) -> Tensor:
    """Default kernel (devices without a dedicated one): torch's convolution."""
    return _stem_torch(frames, weight)


def _stem_cuda(frames, weight):
    check_stem(frames, weight, _STEM_OP)
    return _cuda_backend().stem(frames.contiguous(), weight)


@stem.register_fake
def _stem_fake(frames, weight):
    check_stem(frames, weight, _STEM_OP)
    n, _, height, width = frames.shape
    return frames.new_empty(n, weight.shape[0], (height + 1) // 2, (width + 1) // 2)


_dispatch.register(torch.ops.rubiks_shift.stem.default, {"cpu": _stem_torch, "cuda": _stem_cuda})


def stem_call(frames: Tensor, weight: Tensor) -> Tensor:
    """Run the stem op: the CUDA backend directly for plain CUDA tensors in eager mode (no
    dispatcher round trip), the registered op otherwise."""
    if frames.is_cuda and type(frames) is Tensor and _plain_eager():
        return _cuda_backend().stem(frames, weight)
    return torch.ops.rubiks_shift.stem(frames, weight)
