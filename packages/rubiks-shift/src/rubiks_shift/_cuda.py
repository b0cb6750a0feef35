"""CUDA backend: the op's forward, fused forward and backward on CUDA tensors.

Each call signature (shape, dtypes, stride, padding, flags) gets a plan once, kept in a
dict looked up by that key: the dtype pair's kernels (``_cuda_launch.KernelSet``) and the
launches (``_cuda_plan``: the gather for the forward and grad_x, ``grad_shift`` and
``finalize`` for the shift gradient). A call then allocates its outputs and runs the
plan's steps (``_cuda_launch.run``: one driver call each, on torch's current stream).
The tensors passed are contiguous (the affine forward's may be channel-major) and of the
plan's dtypes: nothing is checked at
launch, so the wrapper in ``_ops`` guarantees them. Plans use the default ``Tuning``
unless a test or benchmark chose another launch layout with ``use_tuning``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch

from ._checks import CHANNEL_MAJOR, channel_major, empty_channel_major, output_shape, remember
from ._cuda_launch import KernelSet, bind, kernel_set, run
from ._cuda_plan import (
    ShiftGradPlan,
    Step,
    affine_relu_plan,
    batch_norm_normalize_step,
    batch_norm_plan,
    gather_plan,
    shift_grad_plan,
    stem_plan,
)
from ._cuda_tuning import TUNING, Tuning

_STORAGE = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
_ACC_DTYPE = {"float64": torch.float64}


class ForwardPlan(NamedTuple):
    """What a forward call signature launches."""

    kernels: KernelSet
    y_shape: tuple | None  # None: the input's shape (allocated like the input)
    steps: tuple[Step, ...]


class BackwardPlan(NamedTuple):
    """What a backward call signature launches."""

    kernels: KernelSet
    gather: tuple[Step, ...] | None  # grad_x's launches; None where it is not needed
    shift_grad: ShiftGradPlan | None  # None where the shift's gradient is not needed
    acc_dtype: torch.dtype  # of the shift gradient's partial sums and result


_tuning = TUNING  # the tuning plans are made with (``use_tuning``)


def use_tuning(tuning: Tuning) -> Tuning:
    """Make later forward and backward plans with ``tuning`` (tests and benchmarks: a
    launch layout other than the default, say a task order); the tuning used until now.
    Its kernel-defining fields must be the defaults': the launched kernels are built (and
    cached) with those; kernels built with others (``_cuda_kernels.Kernels(storage,
    shift_storage, tuning)``) are launched with ``_cuda_launch.run`` directly."""
    global _tuning
    if not isinstance(tuning, Tuning):
        raise TypeError(f"use_tuning takes a Tuning, got {type(tuning).__name__}")
    if tuning.kernel_values() != TUNING.kernel_values():
        changed = sorted(k for k, v in tuning.kernel_values().items() if v != getattr(TUNING, k))
        raise ValueError(f"use_tuning cannot change the kernels' compile-time values: {changed}")
    previous, _tuning = _tuning, tuning
    for plans in (
        _FORWARD_PLANS, _AFFINE_PLANS, _BACKWARD_PLANS, _PROLOGUE_PLANS, _BN_PLANS, _STEM_PLANS
    ):  # fmt: skip
        plans.clear()
    BOUND.clear()
    global bound_generation
    bound_generation += 1  # bound calls handed out before (``fused.call_and_bind``) are stale
    return previous


@contextmanager
def tuned(tuning: Tuning) -> Iterator[Tuning]:
    """``use_tuning(tuning)`` for the ``with`` block, the tuning before it restored when
    the block ends, however it ends; yields that previous tuning."""
    previous = use_tuning(tuning)
    try:
        yield previous
    finally:
        use_tuning(previous)


def _make_current(index: int) -> int:
    """Make device ``index`` current if it is not (autograd's backward thread starts on
    device 0): the device to restore afterwards, or -1 where nothing changed (the common
    path, and CPU tensors under the CUDA simulator). Callers restore it in a ``finally``,
    which costs nothing on the common path (a context manager's enter and exit: ~0.2 us
    per call on the 2-core CPU machine)."""
    if index < 0:
        return -1
    current = torch._C._cuda_getDevice()
    if current == index:
        return -1
    torch.cuda.set_device(index)
    return current


def _shift_for(shift: torch.Tensor) -> torch.Tensor:
    s = shift
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    return s if s.is_contiguous() else s.contiguous()


_CONTIGUOUS = torch.contiguous_format
# (x shape, x dtype, shift dtype, stride, padding, quantize, channel-major)
_FORWARD_PLANS: dict = {}


def _forward_plan(key: tuple, affine: bool = False) -> ForwardPlan:
    """The plan of a forward call signature, on channel-major planes where the key says
    so; ``affine``: the walks of the forward with the prologue (not remembered here)."""
    shape, dtype, shift_dtype, stride, padding, quantize, major = key
    y_shape = output_shape(shape, stride, padding)
    storage = _STORAGE[dtype]
    kernels = kernel_set(storage, _STORAGE[shift_dtype])
    args = (tuple(shape), y_shape, stride, padding, bool(quantize), False, storage)
    steps = gather_plan(*args, _tuning, channel_major=major, affine=affine)
    plan = ForwardPlan(kernels, None if y_shape == tuple(shape) else y_shape, steps)
    return plan if affine else remember(_FORWARD_PLANS, key, plan)


def forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> torch.Tensor:
    """The forward of ``_ops.shift3d`` (its arguments less the gradient settings). A
    channel-major ``x`` (``_checks.channel_major``) gives a channel-major result; any
    other layout is made contiguous and gives a contiguous one."""
    major = False
    if not x.is_contiguous():
        x, major = _kernel_layout(x)
    s = _shift_for(shift)
    key = (x.shape, x.dtype, s.dtype, tuple(stride), tuple(padding), quantize, major)
    plan = _FORWARD_PLANS.get(key) or _forward_plan(key)
    kernels, y_shape, steps = plan
    y = _empty_result(x, y_shape, major)
    index = x.get_device()
    previous = _make_current(index)
    try:
        for step in steps:
            run(kernels, step, (x, s, y), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


def _empty_result(x: torch.Tensor, shape: tuple | None, major: bool) -> torch.Tensor:
    """An uninitialised result of a kernel over ``x``, of ``shape`` (None: x's): a
    channel-major clip where ``major``, else contiguous."""
    if major:  # (C, N, T, H, W) storage seen as (N, T, C, H, W)
        return empty_channel_major(x, shape or x.shape)
    if shape is None:
        # empty_like where the shapes match: 0.6 us less host time than new_empty on the
        # H200 machine (2026-12-01; 0.9-1.3 us without memory_format, whose strides could
        # differ from new_empty's on size-1 dimensions)
        return torch.empty_like(x, memory_format=_CONTIGUOUS)
    return x.new_empty(shape)


def _kernel_layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x, whether it is channel-major) as the kernels read it: a channel-major x as it
    is, any other layout made contiguous."""
    if x.is_contiguous():
        return x, False
    if channel_major(x):
        return x, True
    return x.contiguous(), False


def _per_channel(kernels: KernelSet, t: torch.Tensor) -> torch.Tensor:
    """A prologue's (C,) scale or bias as its kernels read it: contiguous, in their
    accumulation dtype."""
    acc = _ACC_DTYPE.get(kernels.storage, torch.float32)
    return t if t.dtype == acc and t.is_contiguous() else t.to(acc).contiguous()


_AFFINE_PLANS: dict = {}  # the forward's key -> the plan with the prologue


def _affine_plan(key: tuple) -> ForwardPlan:
    """The plan of an affine forward call signature: the forward's launches (with the
    walks chosen for the prologue form) as the prologue kernels, on channel-major planes
    where the key says so."""
    plan = _forward_plan(key, affine=True)
    steps = tuple(step._replace(name=step.name + "_affine") for step in plan.steps)
    return remember(_AFFINE_PLANS, key, plan._replace(steps=steps))


def forward_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> torch.Tensor:
    """``forward`` of relu(x * scale[c] + bias[c]) in one pass: the gathers' affine
    kernels apply the prologue to every source value they read. ``scale`` and ``bias``:
    (C,) in the accumulation dtype (float64 for float64 x, else float32). A channel-major
    ``x`` (``_checks.channel_major``) gives a channel-major result; any other layout is
    made contiguous and gives a contiguous one."""
    x, major = _kernel_layout(x)
    s = _shift_for(shift)
    key = (x.shape, x.dtype, s.dtype, tuple(stride), tuple(padding), quantize, major)
    plan = _AFFINE_PLANS.get(key)
    if plan is None:
        plan = _affine_plan(key)
    kernels, y_shape, steps = plan
    scale, bias = _per_channel(kernels, scale), _per_channel(kernels, bias)
    y = _empty_result(x, y_shape, major)
    index = x.get_device()
    previous = _make_current(index)
    try:
        for step in steps:
            run(kernels, step, (x, s, y, scale, bias), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


_PROLOGUE_PLANS: dict = {}  # (shape, dtype, channel-major, shifted, aligned) -> (kernels, step)


def _prologue_plan(x: torch.Tensor, major: bool, shifted: bool) -> tuple[KernelSet, Step]:
    """(kernels, launch) of ``affine_relu`` over ``x`` as the kernels read it (channel-major
    where ``major``; with a frame shift where ``shifted``): bfloat16 moves as pairs only
    where x's address is on a 4-byte boundary (the result, a fresh allocation, is)."""
    aligned = x.data_ptr() % 4 == 0
    key = (x.shape, x.dtype, major, shifted, aligned)
    plan = _PROLOGUE_PLANS.get(key)
    if plan is None:
        kernels = kernel_set(_STORAGE[x.dtype], "float32")
        step = affine_relu_plan(
            tuple(x.shape), kernels.storage, major, shifted, _tuning, word_aligned=aligned
        )
        plan = remember(_PROLOGUE_PLANS, key, (kernels, step))
    return plan


def _frame_shift_converts(frame_shift: torch.Tensor | None) -> bool:
    """Whether ``affine_relu`` converts this frame shift (the kernel reads contiguous
    int32); a signature whose call converts one has no bound call."""
    if frame_shift is None:
        return False
    return frame_shift.dtype != torch.int32 or not frame_shift.is_contiguous()


def affine_relu(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    frame_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """relu(x * scale[c] + bias[c]) in one pass, in x's layout: a channel-major x
    (``_checks.channel_major``) gives a channel-major result; any other layout is made
    contiguous and gives a contiguous one. ``scale`` and ``bias``: (C,) in the
    accumulation dtype (float64 for float64 x, else float32). ``frame_shift``: None, or
    (C,) int32 on x's device: frame t of channel c then reads frame t + frame_shift[c]
    (0 outside the clip)."""
    x, major = _kernel_layout(x)
    shifted = frame_shift is not None
    kernels, step = _prologue_plan(x, major, shifted)
    scale, bias = _per_channel(kernels, scale), _per_channel(kernels, bias)
    if _frame_shift_converts(frame_shift):
        frame_shift = frame_shift.to(torch.int32).contiguous()
    y = _empty_result(x, None, major)
    if y.numel() == 0:
        return y
    index = x.get_device()
    previous = _make_current(index)
    try:  # without a frame shift the kernel never reads its shift pointer: scale stands in
        run(kernels, step, (x, y, scale, bias, frame_shift if shifted else scale), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


# ------------------------------------------------- the inference ops, bound per signature

# a public call's signature (``rubiks_shift.fused``) -> its bound call, or None where the
# signature has none (the call then takes the path above every time)
BOUND: dict = {}
bound_generation = 0  # how many times BOUND was emptied for a new tuning


def _allocator(x: torch.Tensor, y_shape: tuple | None, major: bool) -> Callable[[], torch.Tensor]:
    """``_empty_result(x, y_shape, major)`` for any x of this one's metadata, with its
    arguments converted once."""
    dtype, device = x.dtype, x.device
    shape = tuple(x.shape) if y_shape is None else tuple(y_shape)
    if major:
        return functools.partial(
            torch.empty_permuted, shape, CHANNEL_MAJOR, dtype=dtype, device=device
        )
    return functools.partial(torch.empty, shape, dtype=dtype, device=device)


def _reads_as_is(x: torch.Tensor) -> bool:
    """Whether x is a non-empty tensor in a layout the kernels read as it is (contiguous
    or channel-major)."""
    return (x.is_contiguous() or channel_major(x)) and x.numel() > 0


def _bindable(x: torch.Tensor, acc: torch.dtype, *per_channel: torch.Tensor) -> bool:
    """Whether the kernels read x as it is and every per-channel tensor is contiguous in
    ``acc``: a call then converts nothing, and its arguments' addresses are all its
    kernels need."""
    return _reads_as_is(x) and all(t.dtype == acc and t.is_contiguous() for t in per_channel)


def _bound_launch(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    affine: bool,
) -> tuple[Callable[..., None], Callable[[], torch.Tensor]] | None:
    """(launch, allocate the result) of a forward signature over an x the kernels read
    as it is (with the prologue where ``affine``), or None where the call converts its
    shift or runs in the CUDA simulator."""
    if shift.dtype not in (torch.float32, torch.float64) or not shift.is_contiguous():
        return None
    major = not x.is_contiguous()
    key = (x.shape, x.dtype, shift.dtype, tuple(stride), tuple(padding), quantize, major)
    if affine:
        kernels, y_shape, steps = _AFFINE_PLANS.get(key) or _affine_plan(key)
    else:
        kernels, y_shape, steps = _FORWARD_PLANS.get(key) or _forward_plan(key)
    launch = bind(kernels, steps, 5 if affine else 3, x.get_device())
    if launch is None:
        return None
    return launch, _allocator(x, y_shape, major)


def bind_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> Callable[..., torch.Tensor] | None:
    """``forward_affine`` for these arguments' signature as one bound call ``f(x, scale,
    bias, shift) -> y`` (for tensors of the same metadata as these, on this host thread,
    with x's device current), or None where a call of this signature converts an argument
    (or runs in the CUDA simulator)."""
    acc = _ACC_DTYPE.get(_STORAGE[x.dtype], torch.float32)
    if not _bindable(x, acc, scale, bias):
        return None
    ready = _bound_launch(x, shift, stride, padding, quantize, affine=True)
    if ready is None:
        return None
    launch, empty = ready

    def call(x, scale, bias, shift):
        y = empty()
        launch(x.data_ptr(), shift.data_ptr(), y.data_ptr(), scale.data_ptr(), bias.data_ptr())
        return y

    return call


def bind_forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> Callable[..., torch.Tensor] | None:
    """``forward`` for these arguments' signature as one bound call ``f(x, shift) -> y``
    (see ``bind_affine``), or None where a call of this signature converts an argument
    (or runs in the CUDA simulator)."""
    if not _reads_as_is(x):
        return None
    ready = _bound_launch(x, shift, stride, padding, quantize, affine=False)
    if ready is None:
        return None
    launch, empty = ready

    def call(x, shift):
        y = empty()
        launch(x.data_ptr(), shift.data_ptr(), y.data_ptr())
        return y

    return call


def bind_affine_relu(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, frame_shift: torch.Tensor | None
) -> Callable[..., torch.Tensor] | None:
    """``affine_relu`` for these arguments' signature as one bound call ``f(x, scale,
    bias, frame_shift) -> y`` (see ``bind_affine``; x's address on a 4-byte boundary
    where this one's is, which decides whether bfloat16 moves as pairs), or None."""
    major = channel_major(x)
    acc = _ACC_DTYPE.get(_STORAGE[x.dtype], torch.float32)
    if not _bindable(x, acc, scale, bias):
        return None
    if _frame_shift_converts(frame_shift):
        return None
    kernels, step = _prologue_plan(x, major, frame_shift is not None)
    launch = bind(kernels, (step,), 5, x.get_device())
    if launch is None:
        return None
    empty = _allocator(x, None, major)

    def call(x, scale, bias, frame_shift):
        y = empty()
        s = scale.data_ptr()  # stands in for a frame shift the kernel does not read
        f = s if frame_shift is None else frame_shift.data_ptr()
        launch(x.data_ptr(), y.data_ptr(), s, bias.data_ptr(), f)
        return y

    return call


# forward key + (normalize, t_factor, need_x, need_shift)
_BACKWARD_PLANS: dict = {}


def _backward_plan(key: tuple) -> BackwardPlan:
    """The plan of a backward call signature. Every launch is a cached object, so each is
    prepared for the driver once (a step rebuilt per call would be prepared on every
    call)."""
    shape, dtype, shift_dtype, stride, padding, quantize, major, *rest = key
    normalize, t_factor, need_x, need_s = rest
    kernels = kernel_set(_STORAGE[dtype], _STORAGE[shift_dtype])
    y_shape = output_shape(shape, stride, padding)
    gather = None
    if need_x:
        args = (y_shape, tuple(shape), stride, padding, bool(quantize), True, kernels.storage)
        gather = gather_plan(*args, _tuning, channel_major=major)
    shift_grad = None
    if need_s:
        args = (tuple(shape), y_shape, stride, padding, bool(normalize), float(t_factor))
        shift_grad = shift_grad_plan(*args, _tuning, channel_major=major)
    acc_dtype = _ACC_DTYPE.get(kernels.storage, torch.float32)
    return remember(_BACKWARD_PLANS, key, BackwardPlan(kernels, gather, shift_grad, acc_dtype))


def backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    normalize_grad: bool,
    t_factor: float,
    need_x: bool,
    need_shift: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_ops.shift3d_backward``: (grad_x, grad_shift), empty where not needed. A
    channel-major ``x`` is read as it is (grad_y then made channel-major too) and gives a
    channel-major grad_x; any other layout is made contiguous."""
    major = False
    if not x.is_contiguous():
        x, major = _kernel_layout(x)
    gy = grad_y
    if gy.dtype != x.dtype:
        gy = gy.to(x.dtype)
    if major:
        if not channel_major(gy):
            gy = empty_channel_major(gy, gy.shape).copy_(gy)
    elif not gy.is_contiguous():
        gy = gy.contiguous()
    s = _shift_for(shift)
    key = (
        x.shape,
        x.dtype,
        s.dtype,
        tuple(stride),
        tuple(padding),
        quantize,
        major,
        normalize_grad,
        t_factor,
        need_x,
        need_shift,
    )
    plan = _BACKWARD_PLANS.get(key) or _backward_plan(key)
    kernels, gather, shift_grad, acc_dtype = plan
    index = x.get_device()
    previous = _make_current(index)
    try:
        if gather is not None:
            gx = _empty_result(x, None, major)
            for step in gather:
                run(kernels, step, (gy, s, gx), index)
        else:
            gx = x.new_empty(0)
        if shift_grad is not None:
            parts, reduce, final = shift_grad
            channels = x.shape[2]
            partial = x.new_empty(parts * 3 * channels, dtype=acc_dtype)
            run(kernels, reduce, (gy, x, s, partial), index)
            out = x.new_empty((3, channels), dtype=acc_dtype)
            run(kernels, final, (partial, s, out), index)
            gs = out if out.dtype == shift.dtype else out.to(shift.dtype)
        else:
            gs = shift.new_empty(0)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return gx, gs


# ------------------------------------------------------------- training batch norm

_BN_PLANS: dict = {}  # (shape, dtype, eps, momentum, aligned) -> (kernels, BatchNormPlan)


def _bn_shape(x: torch.Tensor) -> tuple[int, int, int]:
    """(B, C, P) of a (B, C, ...) batch-norm input: P the values per image and channel."""
    batch, channels = x.shape[0], x.shape[1]
    return batch, channels, x.numel() // max(1, batch * channels)


def _word_aligned(*tensors: torch.Tensor) -> bool:
    """Whether every one of ``tensors`` starts on the boundary of a word of two values
    (4 bytes for bfloat16, 8 for float32), where the batch norm's kernels may move
    words."""
    return all(t.data_ptr() % (2 * t.element_size()) == 0 for t in tensors)


def _bn_plan(x: torch.Tensor, eps: float, momentum: float, aligned: bool):
    """(kernels, launches) of training batch norm over ``x``: the kernels move bfloat16
    and float32 in pairs only where ``aligned`` (every tensor they read on a word's
    boundary, ``_word_aligned``; the ones they write, fresh allocations, are)."""
    key = (x.shape, x.dtype, eps, momentum, aligned)
    plan = _BN_PLANS.get(key)
    if plan is None:
        kernels = kernel_set(_STORAGE[x.dtype], "float32")
        steps = batch_norm_plan(_bn_shape(x), kernels.storage, eps, momentum, _tuning, aligned)
        plan = remember(_BN_PLANS, key, (kernels, steps))
    return plan


def batch_norm_relu_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """relu(batch_norm(x)) in training mode over a contiguous (B, C, ...) x: the batch's
    statistics per channel, the running statistics updated in place. Returns (y, stats),
    stats the (4, C) mean, 1 / sqrt(var + eps), scale and shift of the affine applied
    (the backward's input). weight, bias and the running statistics: contiguous, in the
    accumulation dtype."""
    kernels, plan = _bn_plan(x, eps, momentum, _word_aligned(x))
    channels = x.shape[1]
    acc = _ACC_DTYPE.get(kernels.storage, torch.float32)
    stats = torch.empty(4, channels, device=x.device, dtype=acc)
    y = torch.empty_like(x, memory_format=_CONTIGUOUS)
    index = x.get_device()
    previous = _make_current(index)
    try:
        if plan.channel_forward is not None:
            args = (x, x, y, weight, bias, running_mean, running_var, stats, weight)
            run(kernels, plan.channel_forward, args, index)  # dy and grads unread
        else:
            partial = torch.empty(channels * plan.parts * 2, device=x.device, dtype=acc)
            run(kernels, plan.partial, (x, x, stats, partial), index)
            args = (x, partial, weight, bias, running_mean, running_var, stats)
            run(kernels, plan.stats, args, index)
            run(kernels, plan.normalize, (x, x, y, stats, stats), index)  # dy, coefficients unread
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y, stats


def batch_norm_relu_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stats: torch.Tensor,
    eps: float,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias) of ``batch_norm_relu_forward``; grad_y and x
    contiguous, of x's dtype; the parameter gradients in the accumulation dtype."""
    kernels, plan = _bn_plan(x, eps, momentum, _word_aligned(x, grad_y))
    channels = x.shape[1]
    grad_x = torch.empty_like(x, memory_format=_CONTIGUOUS)
    index = x.get_device()
    previous = _make_current(index)
    try:
        if plan.channel_backward is not None:
            grads = torch.empty(2, channels, device=x.device, dtype=stats.dtype)
            args = (x, grad_y, grad_x, weight, weight, stats, stats, stats, grads)
            run(kernels, plan.channel_backward, args, index)  # bias, running stats unread
            return grad_x, grads[0], grads[1]
        partial = torch.empty(channels * plan.parts * 2, device=x.device, dtype=stats.dtype)
        coefficients = torch.empty(5, channels, device=x.device, dtype=stats.dtype)
        run(kernels, plan.grad_partial, (x, grad_y, stats, partial), index)
        run(kernels, plan.coefficients, (partial, weight, stats, coefficients), index)
        run(kernels, plan.grad_input, (x, grad_y, grad_x, stats, coefficients), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return grad_x, coefficients[3], coefficients[4]


def batch_norm_relu_apply(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``batch_norm_relu_forward``'s y again from its contiguous (B, C, ...) x and its
    stats (the same pass, bit for bit), the statistics left as they are."""
    kernels = kernel_set(_STORAGE[x.dtype], "float32")
    step = batch_norm_normalize_step(_bn_shape(x), kernels.storage, _tuning, _word_aligned(x))
    y = torch.empty_like(x, memory_format=_CONTIGUOUS)
    index = x.get_device()
    previous = _make_current(index)
    try:
        run(kernels, step, (x, x, y, stats, stats), index)  # dy, coefficients unread
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


# ------------------------------------------------------------------------------ the stem

_STEM_PLANS: dict = {}  # (frames shape, dtype, channels) -> (kernels, step)


def stem(frames: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 stride-2 convolution with padding 1, no bias, of contiguous (N, 3, H, W)
    ``frames`` with ``weight`` (C, 3, 3, 3): (N, C, ceil(H/2), ceil(W/2)), contiguous,
    in the frames' dtype."""
    n, _, height, width = frames.shape
    y = frames.new_empty(n, weight.shape[0], (height + 1) // 2, (width + 1) // 2)
    if y.numel() == 0:
        return y
    key = (frames.shape, frames.dtype, weight.shape[0])
    plan = _STEM_PLANS.get(key)
    if plan is None:
        kernels = kernel_set(_STORAGE[frames.dtype], "float32")
        step = stem_plan(tuple(frames.shape), key[2], _tuning)
        plan = remember(_STEM_PLANS, key, (kernels, step))
    kernels, step = plan
    weight = _per_channel(kernels, weight)
    index = frames.get_device()
    previous = _make_current(index)
    try:
        run(kernels, step, (frames, weight, y), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y
