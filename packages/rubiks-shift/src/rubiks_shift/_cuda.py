"""CUDA backend: tensor preparation, launch geometry and a low-overhead launch path.

Launch path. Numba's dispatcher spends 25-90 us per launch on argument handling (type
dispatch, wrapping each tensor as a device array). Each kernel here has one explicit
signature, compiled lazily on first use per device, and is launched through
``cuda.core.launch`` with the argument list built directly from the tensors' data
pointers and sizes, in the layout Numba's kernel ABI expects for a 1-D C-contiguous array
(meminfo, parent, nitems, itemsize, data, shape, stride). The cost in safety: nothing
checks the arguments at launch, so this module only ever passes contiguous tensors of the
dtypes in the signature, which the wrapper guarantees (and the tests check against
Numba's own launch path on the GPU). Kernels go on torch's current stream, read at every
call, so the op is graph-capturable and never synchronises the host.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same kernels run through the
ordinary dispatcher on CPU tensors, for tests without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Sequence

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
BLOCK = 128  # threads per block of the lane-parallel kernels
TARGET_THREADS = 1 << 19  # enough resident work to fill an H100 several times over
MAX_SLABS = 65535  # grid.y limit


def simulator_enabled() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


_kernel_sets: dict[tuple[str, str], K.Kernels] = {}


def _kernels(storage: str, shift_storage: str) -> K.Kernels:
    key = (storage, shift_storage)
    if key not in _kernel_sets:
        _kernel_sets[key] = K.Kernels(storage, shift_storage)
    return _kernel_sets[key]


class _Launcher:
    """One compiled kernel per device, launched without Numba's per-call dispatch."""

    _compiled: dict[tuple[int, int], tuple] = {}
    _streams: dict[int, object] = {}
    _configs: dict[tuple, object] = {}

    @classmethod
    def launch(cls, dispatcher, signature, grid, block, args, device_index: int) -> None:
        key = (id(dispatcher), device_index)
        entry = cls._compiled.get(key)
        if entry is None:
            entry = cls._compile(dispatcher, signature)
            cls._compiled[key] = entry
        function, kinds = entry
        kernel_args = []
        for kind, value in zip(kinds, args):
            if kind == "a":
                n = value.numel()
                size = value.element_size()
                kernel_args += (0, 0, n, size, value.data_ptr(), n, size)
            elif kind == "i":
                kernel_args.append(ctypes.c_int64(value))
            elif kind == "f":
                kernel_args.append(ctypes.c_float(value))
            else:
                kernel_args.append(ctypes.c_double(value))
        handle = torch.cuda.current_stream(device_index).cuda_stream
        stream = cls._streams.get(handle)
        if stream is None:
            from cuda.core import Stream

            stream = cls._streams[handle] = Stream.from_handle(handle)
        config = cls._configs.get((grid, block))
        if config is None:
            from cuda.core import LaunchConfig

            config = cls._configs[(grid, block)] = LaunchConfig(grid=grid, block=block)
        from cuda.core import launch

        launch(stream, config, function, *kernel_args)

    @staticmethod
    def _compile(dispatcher, signature):
        from numba import types as nt

        kernel = dispatcher.compile(signature)
        kinds = []
        for ty in kernel.argument_types:
            if isinstance(ty, nt.Array):
                if ty.ndim != 1 or ty.layout != "C":
                    raise TypeError(f"fast launch supports 1-D C arrays only, got {ty}")
                kinds.append("a")
            elif isinstance(ty, nt.Integer):
                if ty.bitwidth != 64:
                    raise TypeError(f"fast launch supports int64 scalars only, got {ty}")
                kinds.append("i")
            elif ty == nt.float32:
                kinds.append("f")
            elif ty == nt.float64:
                kinds.append("d")
            else:
                raise TypeError(f"unsupported kernel argument type {ty}")
        return kernel._codelibrary.get_cufunc().kernel, tuple(kinds)


def _launch(kernels: K.Kernels, name: str, grid, block, args, device: torch.device) -> None:
    dispatcher = getattr(kernels, name)
    if simulator_enabled():
        converted = [a.numpy() if isinstance(a, torch.Tensor) else a for a in args]
        dispatcher[grid, block](*converted)
        return
    _Launcher.launch(dispatcher, getattr(kernels, name + "_sig"), grid, block, args, device.index)


def _device_guard(t: torch.Tensor):
    """Make t's device current (autograd runs backward on its own thread)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _shift_for(shift: torch.Tensor) -> torch.Tensor:
    s = shift.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    return s.contiguous()


def _geometry(lanes: int, slabs: int, rows: int) -> tuple[tuple[int, int, int], int]:
    """Grid (lane blocks, slabs, row strips) and rows per strip."""
    lane_blocks = (lanes + BLOCK - 1) // BLOCK
    strips = max(1, min(rows, math.ceil(TARGET_THREADS / max(1, lane_blocks * BLOCK * slabs))))
    per_strip = math.ceil(rows / strips)
    strips = math.ceil(rows / per_strip)
    return (lane_blocks, slabs, strips), per_strip


def forward(
    x: torch.Tensor, shift: torch.Tensor, stride: Sequence[int], padding: Sequence[int], quantize: bool
) -> torch.Tensor:
    x = x.detach().contiguous()
    s = _shift_for(shift)
    y = torch.empty(output_shape(x.shape, stride, padding), dtype=x.dtype, device=x.device)
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = y.shape
    kernels = _kernels(_STORAGE[x.dtype], _STORAGE[s.dtype])
    grid, rows = _geometry(channels * w_out, n_batch * t_out, h_out)
    with _device_guard(x):
        _launch_slabs(
            kernels, "forward", grid, x, s, y, n_batch, t_in, t_out, channels, h_in, w_in, h_out, w_out,
            stride, padding, quantize, rows, t_out,
        )
    return y


def _launch_slabs(
    kernels, name, grid, src, s, dst, n_batch, t_in, t_out, channels, h_in, w_in, h_out, w_out,
    stride, padding, quantize, rows, slab_len,
):
    """Launch a lane kernel (one grid row per (n, t) slab of ``slab_len`` frames), splitting
    the batch when n * slab_len exceeds the grid's y limit."""
    per_launch = max(1, MAX_SLABS // slab_len)
    for n0 in range(0, n_batch, per_launch):
        n1 = min(n_batch, n0 + per_launch)
        args = (
            _flat(src[n0:n1]), _flat(s), _flat(dst[n0:n1]), t_in, channels, h_in, w_in, t_out,
            h_out, w_out, *stride, *padding, int(quantize), rows,
        )
        part_grid = (grid[0], (n1 - n0) * slab_len, grid[2])
        _launch(kernels, name, part_grid, (BLOCK, 1, 1), args, src.device)


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
    x = x.detach().contiguous()
    gy = grad_y.detach().to(x.dtype).contiguous()
    s = _shift_for(shift)
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = gy.shape
    kernels = _kernels(_STORAGE[x.dtype], _STORAGE[s.dtype])
    with _device_guard(x):
        if need_x:
            gx = torch.empty_like(x)
            grid, rows = _geometry(channels * w_in, n_batch * t_in, h_in)
            _launch_slabs(
                kernels, "grad_x", grid, gy, s, gx, n_batch, t_in, t_out, channels, h_in, w_in,
                h_out, w_out, stride, padding, quantize, rows, t_in,
            )
        else:
            gx = x.new_empty(0)
        if need_shift:
            gs = _grad_shift(kernels, gy, x, s, stride, padding, normalize_grad, normalize_t_factor)
            gs = gs.to(shift.dtype)
        else:
            gs = shift.new_empty(0)
    return gx, gs


def _grad_shift(kernels, gy, x, s, stride, padding, normalize_grad, t_factor) -> torch.Tensor:
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = gy.shape
    acc_dtype = _ACC_DTYPE.get(kernels.storage, torch.float32)
    total_rows = n_batch * t_out * h_out
    chunks = max(1, min(1024, math.ceil(1024 / channels), math.ceil(total_rows / 8)))
    chunk_rows = math.ceil(total_rows / chunks)
    chunks = math.ceil(total_rows / chunk_rows)
    partial = torch.empty(chunks * 3 * channels, dtype=acc_dtype, device=x.device)
    args = (
        _flat(gy), _flat(x), _flat(s), partial, n_batch, t_in, channels, h_in, w_in, t_out, h_out,
        w_out, *stride, *padding, chunks, chunk_rows,
    )
    _launch(kernels, "grad_shift", (channels, chunks, 1), (32, 8, 1), args, x.device)
    out = torch.empty(3, channels, dtype=acc_dtype, device=x.device)
    args = (partial, _flat(s), out.view(-1), channels, chunks, int(normalize_grad), float(t_factor))
    _launch(kernels, "finalize", ((channels + 127) // 128, 1, 1), (128, 1, 1), args, x.device)
    return out
