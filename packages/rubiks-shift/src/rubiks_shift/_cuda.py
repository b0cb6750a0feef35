"""CUDA backend: tensor preparation, launch geometry and a low-overhead launch path.

Launch path. Numba's dispatcher spends 25-90 us per launch on argument handling (type
dispatch, wrapping each tensor as a device array). Each kernel here has one explicit
signature, compiled lazily on first use per device, and is launched through
``cuda.core.launch`` with the argument list built directly from the tensors' data
pointers and sizes, in the layout Numba's kernel ABI expects
(the kernels take raw pointers: one parameter per tensor). The cost in safety: nothing
checks the arguments at launch, so this module only ever passes contiguous tensors of the
dtypes in the signature, which the wrapper guarantees (and the tests check against
Numba's own launch path on the GPU). Kernels go on torch's current stream, read at every
call, so the op is graph-capturable and never synchronises the host.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run through the
ordinary dispatcher on CPU tensors, for tests without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch

from . import _cuda_kernels as K
from ._checks import output_shape

_STORAGE = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
_ACC_DTYPE = {"float64": torch.float64}
MAX_GRID_YZ = 65535  # grid y (channels) and z (slabs) limits
GRAD_SHIFT_BLOCKS = 2048  # blocks the shift-gradient kernel aims for (several waves)


@functools.cache
def simulator_enabled() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


_kernel_sets: dict[tuple[str, str], K.Kernels] = {}


def _kernels(storage: str, shift_storage: str) -> K.Kernels:
    key = (storage, shift_storage)
    if key not in _kernel_sets:
        _kernel_sets[key] = K.Kernels(storage, shift_storage)
    return _kernel_sets[key]


class Step(NamedTuple):
    """One kernel launch of a plan: grid, block, scalar arguments and, for launches that
    cover part of the batch, element offsets into the two batch-major tensors."""

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple
    src_offset: int = 0
    dst_offset: int = 0


class _Launcher:
    """Compiled kernels per device, launched without Numba's per-call dispatch."""

    functions: ClassVar[dict[tuple[int, int], object]] = {}
    streams: ClassVar[dict[int, object]] = {}
    configs: ClassVar[dict[tuple, object]] = {}

    @classmethod
    def function(cls, dispatcher, signature, device_index: int):
        key = (id(dispatcher), device_index)
        fn = cls.functions.get(key)
        if fn is None:
            from numba import types as nt

            kernel = dispatcher.compile(signature)
            for ty in kernel.argument_types:  # the argument kinds the launch path builds
                ok = isinstance(ty, nt.CPointer) or ty in (nt.int64, nt.float32, nt.float64)
                if not ok:
                    raise TypeError(f"unsupported kernel argument type {ty}")
            fn = cls.functions[key] = kernel._codelibrary.get_cufunc().kernel
        return fn

    @classmethod
    def launch(cls, fn, grid, block, args, device_index: int) -> None:
        from cuda.core import LaunchConfig, Stream, launch

        handle = torch._C._cuda_getCurrentRawStream(device_index)
        stream = cls.streams.get(handle)
        if stream is None:
            stream = cls.streams[handle] = Stream.from_handle(handle)
        config = cls.configs.get((grid, block))
        if config is None:
            config = cls.configs[(grid, block)] = LaunchConfig(grid=grid, block=block)
        launch(stream, config, fn, *args)


def _run(kernels: K.Kernels, step: Step, tensors: Sequence[torch.Tensor], device) -> None:
    """Launch ``step`` with ``tensors`` as its pointer arguments (the first one offset by
    ``src_offset`` elements and the last one by ``dst_offset`` when they are batch-major)."""
    dispatcher = getattr(kernels, step.name)
    if simulator_enabled():
        arrays = [_flat(t).numpy() for t in tensors]
        arrays[0] = arrays[0][step.src_offset :]
        arrays[-1] = arrays[-1][step.dst_offset :]
        dispatcher[step.grid, step.block](*arrays, *step.scalars)
        return
    fn = _Launcher.function(dispatcher, getattr(kernels, step.name + "_sig"), device.index)
    ptrs = [t.data_ptr() for t in tensors]
    if step.src_offset:
        ptrs[0] += step.src_offset * tensors[0].element_size()
    if step.dst_offset:
        ptrs[-1] += step.dst_offset * tensors[-1].element_size()
    scalars = step.scalars
    if step.name == "finalize":  # its last argument is a float of the accumulation type
        real = ctypes.c_double if kernels.storage == "float64" else ctypes.c_float
        scalars = (*scalars[:-1], real(scalars[-1]))
    _Launcher.launch(fn, step.grid, step.block, (*ptrs, *scalars), device.index)


class _DeviceGuard:
    """Make the tensor's device current if it is not (autograd's backward thread starts on
    device 0); a no-op on the common path."""

    __slots__ = ("index", "previous")

    def __init__(self, t: torch.Tensor) -> None:
        self.index = t.device.index if t.is_cuda else None
        self.previous = None

    def __enter__(self):
        if self.index is not None:
            current = torch.cuda.current_device()
            if current != self.index:
                self.previous = current
                torch.cuda.set_device(self.index)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            torch.cuda.set_device(self.previous)


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _shift_for(shift: torch.Tensor) -> torch.Tensor:
    s = shift.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    return s if s.is_contiguous() else s.contiguous()


def _plan(rows: int, width: int) -> tuple[int, int, int, int]:
    """Block (lanes, thread rows), rows per thread, and row chunks for one plane."""
    lanes = 1
    while lanes < width and lanes < 128:
        lanes *= 2
    per_thread = 4 if rows >= 16 else 1
    thread_rows = -(-rows // per_thread)
    block_rows = max(1, min(128 // lanes, thread_rows))
    return lanes, block_rows, per_thread, -(-thread_rows // block_rows)


def _check_channels(channels: int) -> None:
    if channels > MAX_GRID_YZ:
        raise ValueError(
            f"rubiks_shift on CUDA supports at most {MAX_GRID_YZ} channels, got {channels}"
        )


def _batches(n_batch: int, frames: int):
    """Batch ranges whose n * frames fit the grid's z limit."""
    per_launch = max(1, MAX_GRID_YZ // frames)
    for n0 in range(0, n_batch, per_launch):
        yield n0, min(n_batch, n0 + per_launch)


@functools.lru_cache(maxsize=512)
def _gather_plan(src_shape, dst_shape, stride, padding, quantize, adjoint) -> tuple[Step, ...]:
    """Launches of the forward (adjoint=False: src = x, dst = y) or of grad_x
    (adjoint=True: src = grad_y, dst = grad_x)."""
    n_batch, t_src, channels, h_src, w_src = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    _check_channels(channels)
    src_frame = channels * h_src * w_src
    dst_frame = channels * h_dst * w_dst
    steps = []
    if stride == (1, 1, 1):
        lanes, block_rows, per_thread, chunks = _plan(h_dst, -(-w_dst // 4))
        depth = max(1, 128 // (lanes * block_rows))
        for n0, n1 in _batches(n_batch, t_dst):
            scalars = (
                t_src,
                h_src,
                w_src,
                t_dst,
                h_dst,
                w_dst,
                channels,
                *padding,
                int(adjoint),
                int(quantize),
                per_thread,
            )
            grid = (chunks, -(-channels // depth), (n1 - n0) * t_dst)
            steps.append(
                Step(
                    "tile",
                    grid,
                    (lanes, block_rows, depth),
                    scalars,
                    n0 * t_src * src_frame,
                    n0 * t_dst * dst_frame,
                )
            )
        return tuple(steps)
    # strided: the generic kernels (forward over output planes, grad_x over input planes)
    x_shape, y_shape = (dst_shape, src_shape) if adjoint else (src_shape, dst_shape)
    _, t_in, _, h_in, w_in = x_shape
    _, t_out, _, h_out, w_out = y_shape
    lanes, block_rows, per_thread, chunks = _plan(h_dst, w_dst)
    for n0, n1 in _batches(n_batch, t_dst):
        scalars = (
            t_in,
            channels,
            h_in,
            w_in,
            t_out,
            h_out,
            w_out,
            *stride,
            *padding,
            int(quantize),
            per_thread,
        )
        grid = (chunks, channels, (n1 - n0) * t_dst)
        steps.append(
            Step(
                "grad_x" if adjoint else "forward",
                grid,
                (lanes, block_rows, 1),
                scalars,
                n0 * t_src * src_frame,
                n0 * t_dst * dst_frame,
            )
        )
    return tuple(steps)


@functools.lru_cache(maxsize=512)
def _shift_grad_plan(x_shape, y_shape, stride, padding) -> tuple[int, Step, Step]:
    """(number of partial sums, grad_shift launch, finalize launch without its scalars)."""
    n_batch, t_in, channels, h_in, w_in = x_shape
    _, t_out, _, h_out, w_out = y_shape
    _check_channels(channels)
    lanes, block_rows, per_thread, chunks = _plan(h_out, -(-w_out // K.TILE))
    slabs = n_batch * t_out
    group = max(1, -(-slabs * chunks * channels // GRAD_SHIFT_BLOCKS))
    groups = -(-slabs // group)
    parts = chunks * groups
    scalars = (
        slabs,
        t_in,
        channels,
        h_in,
        w_in,
        t_out,
        h_out,
        w_out,
        *stride,
        *padding,
        per_thread,
        group,
    )
    reduce = Step("grad_shift", (chunks, channels, groups), (lanes, block_rows, 1), scalars)
    final = Step("finalize", (channels, 1, 1), (K.FINALIZE_THREADS, 1, 1), (channels, parts))
    return parts, reduce, final


def forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> torch.Tensor:
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    s = _shift_for(shift)
    kernels = _kernels(_STORAGE[x.dtype], _STORAGE[s.dtype])
    y = torch.empty(output_shape(x.shape, stride, padding), dtype=x.dtype, device=x.device)
    steps = _gather_plan(
        tuple(x.shape), tuple(y.shape), tuple(stride), tuple(padding), bool(quantize), False
    )
    with _DeviceGuard(x):
        for step in steps:
            _run(kernels, step, (x, s, y), x.device)
    return y


def backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    normalize_grad: bool,
    normalize_t_factor: float,
    need_x: bool,
    need_shift: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach()
    if not x.is_contiguous():
        x = x.contiguous()
    gy = grad_y.detach()
    if gy.dtype != x.dtype:
        gy = gy.to(x.dtype)
    if not gy.is_contiguous():
        gy = gy.contiguous()
    s = _shift_for(shift)
    kernels = _kernels(_STORAGE[x.dtype], _STORAGE[s.dtype])
    stride, padding = tuple(stride), tuple(padding)
    with _DeviceGuard(x):
        if need_x:
            gx = torch.empty_like(x)
            for step in _gather_plan(
                tuple(gy.shape), tuple(x.shape), stride, padding, bool(quantize), True
            ):
                _run(kernels, step, (gy, s, gx), x.device)
        else:
            gx = x.new_empty(0)
        if need_shift:
            parts, reduce, final = _shift_grad_plan(
                tuple(x.shape), tuple(gy.shape), stride, padding
            )
            acc_dtype = _ACC_DTYPE.get(kernels.storage, torch.float32)
            partial = torch.empty(parts * 3 * x.shape[2], dtype=acc_dtype, device=x.device)
            _run(kernels, reduce, (gy, x, s, partial), x.device)
            out = torch.empty(3, x.shape[2], dtype=acc_dtype, device=x.device)
            final = final._replace(
                scalars=(*final.scalars, int(normalize_grad), float(normalize_t_factor))
            )
            _run(kernels, final, (partial, s, out), x.device)
            gs = out if out.dtype == shift.dtype else out.to(shift.dtype)
        else:
            gs = shift.new_empty(0)
    return gx, gs
