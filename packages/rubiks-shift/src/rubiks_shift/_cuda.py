"""CUDA backend: tensor preparation, launch geometry and a low-overhead launch path.

Launch path. Numba's dispatcher spends 25-90 us per launch on argument handling (type
dispatch, wrapping each tensor as a device array). Each kernel here has one explicit
signature, loaded on first use per device from the on-disk kernel cache (``_kernel_cache``;
compiled into it on a miss), and is launched by one ctypes call
to the driver's ``cuLaunchKernel``, with the argument block built directly from the
tensors' data pointers and the plan's pre-converted scalars, in the layout Numba's kernel
ABI expects (the kernels take raw pointers: one parameter per tensor). The cost in safety: nothing
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
import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import ClassVar, NamedTuple

import torch

from . import _cuda_config as K
from . import _kernel_cache
from ._checks import output_shape
from ._compile_notice import compile_notice
from ._cuda_config import GATHER_GROUP

_STORAGE = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
_ACC_DTYPE = {"float64": torch.float64}
MAX_GRID_YZ = 65535  # grid y limit (channels of the shift-gradient kernel)
GRAD_SHIFT_TASKS = 2  # (column) tasks per thread of the shift-gradient kernel
GATHER_THREADS = int(os.environ.get("RUBIKS_SHIFT_GATHER_THREADS", "256"))  # per block
# threads per block of the frame walk: 128 (H200, 2026-12-01, v8 at 72 registers: forward
# at (8,8,72,56,56) 0.0361 ms in blocks of 128, 0.0404 in blocks of 256 — 7 blocks of 128
# resident per SM against 3 of 256; BENCHMARKS.md)
FRAME_THREADS = int(os.environ.get("RUBIKS_SHIFT_FRAME_THREADS", "128"))
GATHER_TASKS = 1 << 18  # fewest gather tasks before columns are split into shorter chunks
GATHER_TASKS_ONE_WAVE = 1 << 19  # tasks to aim for with one thread per task (untuned)
GATHER_ROWS = int(os.environ.get("RUBIKS_SHIFT_GATHER_ROWS", "0"))  # benchmarking override
# The gather's threads loop over tasks with the grid's stride; where it is tuned (below) its
# grid is capped at this many waves of the blocks resident on the device at once (0: one
# thread per task)
GATHER_WAVES = int(os.environ.get("RUBIKS_SHIFT_GATHER_WAVES", "1"))
# The gather's task order: "auto" (frames of a channel side by side where tuned and the
# rows are at least a warp wide, else planes in memory order), "frames" or "planes"
GATHER_ORDER = os.environ.get("RUBIKS_SHIFT_GATHER_ORDER", "auto")
FRAMES_INNER_MIN_WIDTH = 32
# Which gather walks the stride-1 forms (temporal and row stride 1, W > 1): "auto" /
# "frames" (the frame-walking gather) or "rows" (the row walk, as for every other stride)
GATHER_KERNEL = os.environ.get("RUBIKS_SHIFT_GATHER_KERNEL", "auto")
# fewest frame-walk tasks before frames, then rows, are split (H200, 2026-12-01: at
# (8,8,576,7,7), 32k tasks of 8 frames 0.0112 ms, 65k of 4 frames 0.0104 ms, 258k of one
# frame 0.0187 ms)
FRAME_TASKS = 1 << 15
# The simulator runs a gather as this many one-thread blocks, so each thread loops over
# several tasks (the grid stride). One thread per block: the simulator runs blocks one
# after another, and several threads of one block, polled by the main thread, sometimes
# ran 100x slower (GIL contention; 0.07 s or 30 s for the same 17 x 13 case, 2026-12-01)
SIM_GATHER_BLOCKS = 4


@functools.cache
def simulator_enabled() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


class KernelSet:
    """The kernels of one (storage, shift storage) pair, as the launch path sees them.

    Launches load each kernel from the on-disk cache (``_kernel_cache``) where it is
    there, so a warm process never imports Numba's CUDA target. The Numba dispatchers
    (``gather``, ``gather_sig``, ... of ``_cuda_kernels.Kernels``) are built on first
    attribute access: on a cache miss, under the simulator, and for tests and
    benchmarks that use them directly."""

    def __init__(self, storage: str, shift_storage: str) -> None:
        self.storage = storage
        self.shift_storage = shift_storage
        self._built = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._built is None:
            from ._cuda_kernels import Kernels

            self._built = Kernels(self.storage, self.shift_storage)
        return getattr(self._built, name)


_kernel_sets: dict[tuple[str, str], KernelSet] = {}


def _kernels(storage: str, shift_storage: str) -> KernelSet:
    key = (storage, shift_storage)
    if key not in _kernel_sets:
        _kernel_sets[key] = KernelSet(storage, shift_storage)
    return _kernel_sets[key]


class Step(NamedTuple):
    """One kernel launch of a plan: kernel name, grid, block and scalar arguments."""

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple
    waves: int = 0  # > 0: a grid-stride kernel, its grid capped at this many resident waves


def _scalar_types() -> dict:
    """How the launch path passes each scalar kernel argument type."""
    from numba import types as nt

    return {nt.int64: ctypes.c_int64, nt.float32: ctypes.c_float, nt.float64: ctypes.c_double}


def _scalar_kinds(kernel) -> tuple:
    """How each scalar argument of a compiled Numba kernel is passed (ctypes types)."""
    from numba import types as nt

    passing = _scalar_types()
    kinds = []
    for ty in kernel.argument_types:
        if isinstance(ty, nt.CPointer):
            continue
        if ty not in passing:
            raise TypeError(f"unsupported kernel argument type {ty}")
        kinds.append(passing[ty])
    return tuple(kinds)


@functools.cache
def _libcuda():
    return ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")


def _function_handle(kernel_handle: int) -> int:
    """The CUfunction of a library kernel (CUkernel) in the current context (a handle that
    is already a CUfunction, from older cuda.core versions, is returned as it is)."""
    get = _libcuda().cuKernelGetFunction
    get.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    get.restype = ctypes.c_int
    out = ctypes.c_void_p()
    if get(ctypes.byref(out), kernel_handle) != 0 or not out.value:
        return kernel_handle
    return int(out.value)


_CUDA_ERROR_INVALID_CONTEXT = 201


def _ensure_context(device_index: int) -> None:
    """Make device ``device_index``'s primary context (the one PyTorch uses) current in
    this host thread if the thread has none. A thread that has made no CUDA runtime call
    has no current context: autograd's backward thread, say, whose first launch is ours
    (PyTorch skips cudaSetDevice when the device number already matches, and an allocation
    served from its cache calls nothing), where a driver launch fails with
    CUDA_ERROR_INVALID_CONTEXT."""
    lib = _libcuda()
    ctx = ctypes.c_void_p()
    if lib.cuCtxGetCurrent(ctypes.byref(ctx)) == 0 and ctx.value:
        return
    device = ctypes.c_int()
    calls = (
        ("cuDeviceGet", lib.cuDeviceGet(ctypes.byref(device), ctypes.c_int(device_index))),
        ("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device)),
        ("cuCtxSetCurrent", lib.cuCtxSetCurrent(ctx)),
    )
    for name, result in calls:
        if result != 0:
            raise RuntimeError(
                f"rubiks_shift: {name} failed (CUresult {result}) while making device "
                f"{device_index}'s context current in this thread"
            )


@functools.cache
def _resident_blocks(handle: int, threads: int, device_index: int) -> int:
    """How many blocks of ``threads`` threads of kernel ``handle`` the device holds at
    once (blocks per multiprocessor from the driver's occupancy calculator x SMs)."""
    lib = _libcuda()
    per_sm, sms, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    occupancy = lib.cuOccupancyMaxActiveBlocksPerMultiprocessor
    occupancy.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int]
    occupancy.argtypes.append(ctypes.c_size_t)
    results = (
        occupancy(ctypes.byref(per_sm), handle, threads, 0),
        lib.cuDeviceGet(ctypes.byref(device), ctypes.c_int(device_index)),
        lib.cuDeviceGetAttribute(ctypes.byref(sms), 16, device),  # MULTIPROCESSOR_COUNT
    )
    if any(results) or per_sm.value < 1:
        raise RuntimeError(f"rubiks_shift: occupancy query failed (CUresults {results})")
    return per_sm.value * sms.value


def _launch_grid(step: Step, handle: int, device_index: int) -> tuple[int, int, int]:
    """The grid of ``step``: capped at ``step.waves`` waves of resident blocks for a
    grid-stride kernel (its threads loop over the tasks), else as planned."""
    if step.waves <= 0:
        return step.grid
    cap = step.waves * _resident_blocks(handle, step.block[0], device_index)
    return (min(step.grid[0], cap), *step.grid[1:])


@functools.cache
def _cu_launch_kernel():
    """The driver's cuLaunchKernel through ctypes, without declared argument types: the
    launch path passes ctypes objects it converted once per plan step (the function, grid,
    block and shared-memory size) and the stream, so a call converts nothing (cuda.core's
    launch spends ~20 us per call converting 20 Python arguments; declared argument types
    cost 0.7-0.8 us per call more for these 11 on the H200 machine, 2026-12-01)."""
    return ctypes.CFUNCTYPE(ctypes.c_int)(("cuLaunchKernel", _libcuda()))


class _Launcher:
    """Compiled kernels per device, launched without Numba's per-call dispatch.

    Each (kernel set, plan step, device, host thread) gets one preallocated argument
    block and its launch arguments converted to ctypes once: the pointer slots are
    rewritten and the block handed to cuLaunchKernel (which copies it), so a launch
    builds no Python objects beyond the stream handle and the driver call itself."""

    functions: ClassVar[dict[tuple[int, int], tuple[int, tuple]]] = {}
    loaded: ClassVar[dict[tuple, tuple[int, tuple]]] = {}  # (dtypes, kernel, device)
    entries: ClassVar[dict[tuple, tuple]] = {}
    cu_launch = None
    lock = threading.RLock()
    workers: _kernel_cache.Workers | None = None

    @classmethod
    def function(
        cls, dispatcher, signature, device_index: int, label: str = "kernel"
    ) -> tuple[int, tuple]:
        """(kernel handle, how each scalar argument is passed) for ``dispatcher``;
        ``label`` names it in the first-use compile notice."""
        key = (id(dispatcher), device_index)
        fn = cls.functions.get(key)
        if fn is None:
            what = f"the CUDA {label} for device {device_index}"
            with compile_notice(what, key, "once per process and dtype"):
                kernel = dispatcher.compile(signature)
            handle = _function_handle(int(kernel._codelibrary.get_cufunc().handle))
            fn = cls.functions[key] = (handle, _scalar_kinds(kernel))
            cls.cu_launch = _cu_launch_kernel()
        return fn

    @classmethod
    def cached(cls, kernels: KernelSet, name: str, device_index: int) -> tuple[int, tuple]:
        """(kernel handle, how each scalar argument is passed) of kernel ``name`` of
        ``kernels`` on device ``device_index``: loaded from the on-disk cache, or compiled
        into it on a miss (with the set's other missing kernels compiled in parallel
        worker processes); compiled in this process as before where the cache is off."""
        key = (kernels.storage, kernels.shift_storage, name, device_index)
        fn = cls.loaded.get(key)
        if fn is not None:
            return fn
        with cls.lock:
            fn = cls.loaded.get(key)
            if fn is None:
                fn = cls.loaded[key] = cls._load_or_compile(kernels, name, device_index)
                cls.cu_launch = _cu_launch_kernel()
        return fn

    @classmethod
    def _load_or_compile(cls, kernels: KernelSet, name: str, index: int) -> tuple[int, tuple]:
        kc = _kernel_cache
        label = f"{name} kernel for {kernels.storage} (shift {kernels.shift_storage})"
        directory = kc.cache_dir()
        if directory is not None:
            try:
                return cls._through_cache(kernels, name, index, label, directory)
            except (OSError, kc.CacheError) as e:  # no usable cache: as without one
                kc.log.info("rubiks-shift: kernel cache not used for %s (%s)", label, e)
        return cls.function(getattr(kernels, name), getattr(kernels, name + "_sig"), index, label)

    @classmethod
    def _through_cache(cls, kernels, name, index, label, directory) -> tuple[int, tuple]:
        """Load ``name`` from the cache, compiling it into the cache on a miss."""
        kc = _kernel_cache
        what = f"the CUDA {label} for device {index}"
        notice_key = ("cuda", kernels.storage, kernels.shift_storage, name, index)
        facts = kc.device_facts(index)
        ckey = kc.make_key(kernels.storage, kernels.shift_storage, name, *facts)
        path = kc.entry_path(directory, ckey)
        entry = kc.read(path, ckey)
        if entry is not None:
            try:
                with compile_notice(what, notice_key, source=f"the kernel cache in {directory}"):
                    handle = kc.load(entry, index)
                kc.log.debug("rubiks-shift: loaded %s from %s", what, path)
                return handle, tuple(kc.ARG_KINDS[a] for a in entry.args)
            except kc.CacheError as e:  # an entry the driver refuses: compile it again
                kc.log.info("rubiks-shift: cannot load %s (%s); recompiling", path, e)
                with suppress(OSError):
                    path.unlink()
        start = time.perf_counter()
        when = f"once per machine and dtype; cached in {directory}"
        with compile_notice(what, notice_key, when):
            entry = cls._from_workers(kernels, name, index, facts, directory, ckey, path)
            fn = None
            if entry is None:
                entry, fn = cls._compile_here(kernels, name, path, ckey)
            if fn is None:
                fn = (kc.load(entry, index), tuple(kc.ARG_KINDS[a] for a in entry.args))
        kc.log.info(
            "rubiks-shift: compiled %s in %.1f s (cached in %s)",
            what, time.perf_counter() - start, directory,
        )  # fmt: skip
        return fn

    @classmethod
    def _from_workers(cls, kernels, name, index, facts, directory, ckey, path):
        """The entry of ``name`` compiled by a worker process, started together with
        workers for the set's other kernels that are not cached yet; None where workers
        are off or the worker failed (its output is logged at INFO level)."""
        kc = _kernel_cache
        count = kc.worker_count()
        if count == 0:
            return None
        if cls.workers is None:
            cls.workers = kc.Workers(count)
        missing = [name]
        for other in kc.PREFETCH_AFFINE if name.endswith("_affine") else kc.PREFETCH:
            key = kc.make_key(kernels.storage, kernels.shift_storage, other, *facts)
            if other != name and not kc.entry_path(directory, key).exists():
                missing.append(other)
        job = cls.workers.submit(kernels.storage, kernels.shift_storage, missing, index)[0]
        job.done.wait()
        entry = kc.read(path, ckey)
        if entry is None:
            kc.log.info(
                "rubiks-shift: the compile worker for %s failed (exit status %s), compiling "
                "in this process: %s", name, job.returncode, job.output.strip()[-2000:],
            )  # fmt: skip
        return entry

    @classmethod
    def _compile_here(cls, kernels, name, path, ckey):
        """(entry, None) of ``name`` compiled with Numba in this process and written to
        the cache, or (None, (handle, argument kinds)) from Numba's own module where
        Numba gives no standalone cubin."""
        kc = _kernel_cache
        with kc.locked(path):  # another process may be compiling it: wait for it
            entry = kc.read(path, ckey)
            if entry is not None:
                return entry, None
            compiled = getattr(kernels, name).compile(getattr(kernels, name + "_sig"))
            entry = kc.entry_of(compiled)
            if entry is None:
                handle = _function_handle(int(compiled._codelibrary.get_cufunc().handle))
                return None, (handle, _scalar_kinds(compiled))
            try:
                kc.write(path, ckey, entry)
            except OSError as e:
                kc.log.info("rubiks-shift: cannot write kernel cache entry %s (%s)", path, e)
        return entry, None

    @classmethod
    def prepare(cls, kernels: KernelSet, step: Step, n_ptrs: int, device_index: int) -> tuple:
        """(handle, pointer slots, argument array, the function, launch dimensions and
        shared-memory size as ctypes, the scalars kept alive, the step) of ``step`` for
        this host thread."""
        if isinstance(kernels, KernelSet):
            handle, kinds = cls.cached(kernels, step.name, device_index)
        else:  # a benchmark's variant kernels: compiled in this process, not cached
            handle, kinds = cls.function(
                getattr(kernels, step.name),
                getattr(kernels, step.name + "_sig"),
                device_index,
                f"{step.name} kernel for {kernels.storage} (shift {kernels.shift_storage})",
            )
        objs = tuple(kind(v) for kind, v in zip(kinds, step.scalars, strict=True))
        pointers = (ctypes.c_uint64 * n_ptrs)()
        base = ctypes.addressof(pointers)
        params = (ctypes.c_void_p * (n_ptrs + len(objs)))(
            *range(base, base + 8 * n_ptrs, 8), *(ctypes.addressof(o) for o in objs)
        )
        _ensure_context(device_index)  # once per thread and step: a new thread may have none
        if cls.cu_launch is None:  # kernels loaded before its first use in this process
            cls.cu_launch = _cu_launch_kernel()
        grid = _launch_grid(step, handle, device_index)
        dims = (*grid, *step.block, 0)  # grid, block, dynamic shared memory
        head = (ctypes.c_void_p(handle), *(ctypes.c_uint(d) for d in dims))
        entry = (handle, pointers, params, head, objs, step)
        if len(cls.entries) >= 4096:  # plans evicted from their caches leave stale entries
            cls.entries.clear()
        cls.entries[(id(kernels), id(step), device_index, threading.get_ident())] = entry
        return entry


def _run(kernels: KernelSet, step: Step, tensors: Sequence[torch.Tensor], index: int) -> None:
    """Launch ``step`` with ``tensors`` as its pointer arguments on device ``index``, on
    torch's current stream."""
    if simulator_enabled():
        arrays = [_flat(t.detach()).numpy() for t in tensors]
        grid, block = step.grid, step.block
        if step.name.startswith("gather"):  # a few threads, each looping over tasks
            grid, block = (SIM_GATHER_BLOCKS, 1, 1), (1, 1, 1)
        getattr(kernels, step.name)[grid, block](*arrays, *step.scalars)
        return
    # keyed by identity: plan steps are cached objects, and hashing a step's ~25 scalars
    # on every launch costs about a microsecond; the entry keeps its step, so a recycled
    # id is recognised
    entry = _Launcher.entries.get((id(kernels), id(step), index, threading.get_ident()))
    if entry is None or entry[5] is not step:
        entry = _Launcher.prepare(kernels, step, len(tensors), index)
    pointers = entry[1]
    for i, t in enumerate(tensors):
        pointers[i] = t.data_ptr()
    stream = ctypes.c_void_p(torch._C._cuda_getCurrentRawStream(index))
    result = _Launcher.cu_launch(*entry[3], stream, entry[2], None)
    if result == _CUDA_ERROR_INVALID_CONTEXT:  # the thread's context was taken away since
        _ensure_context(index)
        result = _Launcher.cu_launch(*entry[3], stream, entry[2], None)
    if result != 0:
        raise RuntimeError(f"rubiks_shift: cuLaunchKernel({step.name}) failed (CUresult {result})")


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


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1)
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _shift_for(shift: torch.Tensor) -> torch.Tensor:
    s = shift
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    return s if s.is_contiguous() else s.contiguous()


def _check_channels(channels: int) -> None:
    if channels > MAX_GRID_YZ:
        raise ValueError(
            f"rubiks_shift on CUDA supports at most {MAX_GRID_YZ} channels, got {channels}"
        )


def _task_rows(
    planes: int, rows: int, width: int, row_stride: int, adjoint: bool, group: int = 1
) -> int:
    """Destination rows per gather task, by row walk (the best of a sweep on an H200,
    2026-12-01, benchmarks/sweep_kernels.py, with the grid capped at one wave): 16 for the
    row-reusing stride-1 walk, 8 for the generic strided walk, whole columns for the
    adjoint's stride-2 walk; then halved (in multiples of ``group``, the unrolled row
    group) while that leaves fewer than GATHER_TASKS tasks to spread over the GPU."""
    if row_stride == 1:
        per_task = 16
    elif adjoint and row_stride == 2:
        per_task = rows
    else:
        per_task = 8
    per_task = min(rows, per_task)
    while per_task > group and planes * -(-rows // per_task) * width < GATHER_TASKS:
        per_task = min(rows, -(-(per_task // 2) // group) * group)
    return per_task


def _task_rows_per_thread(planes: int, rows: int, width: int, group: int = 1) -> int:
    """Destination rows per task with one task per thread (the v5 rule): whole columns
    unless that leaves too few tasks to fill the GPU (about two waves of H100-sized
    residency); a multiple of ``group`` where the plane has that many rows."""
    chunks = min(rows, max(1, -(-GATHER_TASKS_ONE_WAVE // (planes * width))))
    per_task = max(min(rows, 4), -(-rows // chunks))
    return min(rows, -(-per_task // group) * group)


def _gather_layout(
    storage: str,
    quantize: bool,
    adjoint: bool,
    planes: int,
    h_dst: int,
    w_dst: int,
    row_stride: int,
) -> tuple[bool, int, int]:
    """(frames inner, grid waves, rows per task) of a gather launch. Tuned on an H200
    (2026-12-01, float32 without quantize; BENCHMARKS.md v6): a grid of one resident wave
    whose threads loop over tasks, rows by row walk, and frames inner where a row fills a
    warp (narrower rows keep the planes' memory order, which keeps a warp's accesses
    contiguous). Other dtypes and quantize keep the v5 layout (one thread per task,
    planes in order), which has not been swept yet."""
    tuned = storage == "float32" and not quantize
    if GATHER_ROWS:
        rows = max(1, min(h_dst, GATHER_ROWS))
    elif tuned:
        rows = _task_rows(planes, h_dst, w_dst, row_stride, adjoint, GATHER_GROUP)
    else:
        rows = _task_rows_per_thread(planes, h_dst, w_dst, GATHER_GROUP)
    if GATHER_ORDER == "auto":
        frames_inner = tuned and w_dst >= FRAMES_INNER_MIN_WIDTH
    else:
        frames_inner = GATHER_ORDER == "frames"
    return frames_inner, GATHER_WAVES if tuned else 0, rows


def _extents(src_shape, dst_shape) -> tuple[int, ...]:
    """(C, Ts, Hs, Ws, Td, Hd, Wd): a gather's channels and source / destination sizes, in
    the order its kernel takes them."""
    _, t_src, channels, h_src, w_src = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    return channels, t_src, h_src, w_src, t_dst, h_dst, w_dst


def frames_walk_applies(src_shape, stride) -> bool:
    """Whether the frame-walking gather can run this gather: temporal and row stride 1
    and a source more than one column wide."""
    return stride[0] == 1 and stride[1] == 1 and src_shape[4] > 1


def _frame_layout(batch: int, channels: int, t_dst: int, h_dst: int, w_dst: int) -> tuple[int, int]:
    """(frames, rows) per task of the frame-walking gather: all frames and FRAME_ROWS
    rows, then fewer frames, then fewer rows, while that leaves under FRAME_TASKS tasks
    to spread over the GPU."""
    from ._cuda_config import FRAME_ROWS

    frames, rows = t_dst, min(h_dst, FRAME_ROWS)

    def tasks(f: int, r: int) -> int:
        return batch * channels * -(-t_dst // f) * -(-h_dst // r) * w_dst

    while frames > 1 and tasks(frames, rows) < FRAME_TASKS:
        frames = -(-frames // 2)
    while rows > 1 and tasks(frames, rows) < FRAME_TASKS:
        rows = -(-rows // 2)
    return frames, rows


def _frames_plan(
    src_shape, dst_shape, stride, padding, quantize, adjoint, rows, frames, waves, bound=None
) -> tuple[Step, ...]:
    """The launch of the frame-walking gather (see ``_gather_plan``); ``bound``: the
    kernel's compile-time bound on rows per task (default FRAME_ROWS)."""
    from ._cuda_config import FRAME_ROWS

    bound = bound or FRAME_ROWS
    n_batch, _, channels, _, _ = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    auto_frames, auto_rows = _frame_layout(n_batch, channels, t_dst, h_dst, w_dst)
    frames = frames or auto_frames
    rows = rows or auto_rows
    if not 1 <= rows <= bound or frames < 1:
        raise ValueError(f"frame-walk tasks of {rows} rows (at most {bound}), {frames} frames")
    bands = -(-h_dst // rows)
    chunks = -(-t_dst // frames)
    tasks = n_batch * channels * chunks * bands * w_dst
    scalars = (
        tasks,
        *_extents(src_shape, dst_shape),
        stride[2],
        *padding,
        int(adjoint),
        int(quantize),
        rows,
        frames,
        1.0 / w_dst,
        1.0 / bands,
        1.0 / chunks,
        1.0 / channels,
    )
    grid = (-(-tasks // FRAME_THREADS), 1, 1)
    return (Step("gather_frames", grid, (FRAME_THREADS, 1, 1), scalars, waves or 0),)


@functools.lru_cache(maxsize=512)
def _gather_plan(
    src_shape,
    dst_shape,
    stride,
    padding,
    quantize,
    adjoint,
    rows=None,
    storage="float32",
    frames_inner=None,
    waves=None,
    kernel=None,
    frames=None,
    frame_bound=None,
) -> tuple[Step, ...]:
    """Launches of the forward (adjoint=False: src = x, dst = y) or of grad_x
    (adjoint=True: src = grad_y, dst = grad_x) for ``storage`` tensors. ``kernel``:
    "frames" (the frame-walking gather, where it applies) or "rows" (the row walk);
    None: GATHER_KERNEL. ``rows`` per task, the row walk's task order, the grid's waves
    and the frame walk's ``frames`` per task override the defaults (benchmark sweeps;
    ``frame_bound``: the rows-per-task bound of a frame-walk kernel built with another
    than FRAME_ROWS)."""
    n_batch, _, channels, h_src, w_src = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    _check_channels(channels)
    for h, w in ((h_src, w_src), (h_dst, w_dst)):
        if h * w >= 2**31:
            raise ValueError(f"rubiks_shift on CUDA: planes of {h}x{w} are too large (>= 2^31)")
    kernel = kernel or ("rows" if GATHER_KERNEL == "rows" else "frames")
    if kernel == "frames" and frames_walk_applies(src_shape, stride):
        return _frames_plan(
            src_shape, dst_shape, stride, padding, quantize, adjoint, rows, frames, waves,
            frame_bound,
        )  # fmt: skip
    planes = n_batch * t_dst * channels
    auto = _gather_layout(storage, quantize, adjoint, planes, h_dst, w_dst, stride[1])
    frames_inner = auto[0] if frames_inner is None else frames_inner
    waves = auto[1] if waves is None else waves
    rows = rows or auto[2]
    chunks = -(-h_dst // rows)  # row chunks per destination column
    tasks = n_batch * t_dst * channels * chunks * w_dst
    scalars = (
        tasks,
        *_extents(src_shape, dst_shape),
        *stride,
        *padding,
        int(adjoint),
        int(quantize),
        rows,
        int(frames_inner),
        1.0 / (chunks * w_dst),
        1.0 / w_dst,
        1.0 / channels,
        1.0 / t_dst,
        1.0 / chunks,
    )
    grid = (-(-tasks // GATHER_THREADS), 1, 1)
    name = "gather_narrow" if w_src == 1 else "gather"  # a one-column source: one slot
    return (Step(name, grid, (GATHER_THREADS, 1, 1), scalars, waves),)


@functools.lru_cache(maxsize=512)
def _shift_grad_plan(
    x_shape, y_shape, stride, padding, rows=None, blocks=None
) -> tuple[int, Step, Step]:
    """(number of partial sums per channel, grad_shift launch, finalize launch without its
    scalars); ``rows`` per task and ``blocks`` per channel override the defaults
    (benchmark sweeps)."""
    n_batch, t_in, channels, h_in, w_in = x_shape
    _, t_out, _, h_out, w_out = y_shape
    _check_channels(channels)
    slabs = n_batch * t_out
    # whole output columns per task, two tasks per thread (the best of a sweep on an
    # H200, 2026-12-01: benchmarks/sweep_kernels.py)
    rows = rows or h_out
    per_plane = -(-h_out // rows) * w_out
    blocks = blocks or max(1, -(-slabs * per_plane // (K.REDUCE_THREADS * GRAD_SHIFT_TASKS)))
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
        rows,
        1.0 / per_plane,
        1.0 / w_out,
        1.0 / t_out,
    )
    reduce = Step("grad_shift", (blocks, channels, 1), (K.REDUCE_THREADS, 1, 1), scalars)
    final = Step("finalize", (channels, 1, 1), (K.FINALIZE_THREADS, 1, 1), (channels, blocks))
    return blocks, reduce, final


_CONTIGUOUS = torch.contiguous_format
_FORWARD_PLANS: dict = {}  # (x shape, x dtype, shift dtype, stride, padding, quantize)


def _forward_plan(key: tuple) -> tuple:
    """(kernels, output shape or None where it is the input's, launches) of a forward
    call signature."""
    shape, dtype, shift_dtype, stride, padding, quantize = key
    y_shape = output_shape(shape, stride, padding)
    plan = (
        _kernels(_STORAGE[dtype], _STORAGE[shift_dtype]),
        None if y_shape == tuple(shape) else y_shape,
        _gather_plan(
            tuple(shape), y_shape, stride, padding, bool(quantize), False, None, _STORAGE[dtype]
        ),
    )
    if len(_FORWARD_PLANS) >= 1024:
        _FORWARD_PLANS.clear()
    _FORWARD_PLANS[key] = plan
    return plan


def forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> torch.Tensor:
    if not x.is_contiguous():
        x = x.contiguous()
    s = _shift_for(shift)
    key = (x.shape, x.dtype, s.dtype, tuple(stride), tuple(padding), quantize)
    plan = _FORWARD_PLANS.get(key) or _forward_plan(key)
    kernels, y_shape, steps = plan
    # empty_like where the shapes match: 0.6 us less host time than new_empty on the
    # H200 machine (2026-12-01; 0.9-1.3 us without memory_format, whose strides could
    # differ from new_empty's on size-1 dimensions)
    y = torch.empty_like(x, memory_format=_CONTIGUOUS) if y_shape is None else x.new_empty(y_shape)
    index = x.get_device()
    previous = _make_current(index)
    try:
        for step in steps:
            _run(kernels, step, (x, s, y), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


_AFFINE_PLANS: dict = {}  # forward key -> the plan with the prologue kernels


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
    (C,) in the accumulation dtype (float64 for float64 x, else float32)."""
    if not x.is_contiguous():
        x = x.contiguous()
    s = _shift_for(shift)
    key = (x.shape, x.dtype, s.dtype, tuple(stride), tuple(padding), quantize)
    plan = _AFFINE_PLANS.get(key)
    if plan is None:
        kernels, y_shape, steps = _FORWARD_PLANS.get(key) or _forward_plan(key)
        steps = tuple(step._replace(name=step.name + "_affine") for step in steps)
        plan = _AFFINE_PLANS[key] = (kernels, y_shape, steps)
    kernels, y_shape, steps = plan
    acc = _ACC_DTYPE.get(kernels.storage, torch.float32)
    scale = scale.to(acc).contiguous()
    bias = bias.to(acc).contiguous()
    y = torch.empty_like(x, memory_format=_CONTIGUOUS) if y_shape is None else x.new_empty(y_shape)
    index = x.get_device()
    previous = _make_current(index)
    try:
        for step in steps:
            _run(kernels, step, (x, s, y, scale, bias), index)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return y


_BACKWARD_PLANS: dict = {}  # forward key + (normalize, t_factor, need_x, need_shift)


def _backward_plan(key: tuple) -> tuple:
    """(kernels, grad_x launches or None, shift-gradient partial count, its two launches or
    None, accumulation dtype) of a backward call signature. Every launch is a cached object,
    so each is prepared for the driver once (a step rebuilt per call would be prepared on
    every call)."""
    shape, dtype, shift_dtype, stride, padding, quantize, normalize, t_factor, need_x, need_s = key
    kernels = _kernels(_STORAGE[dtype], _STORAGE[shift_dtype])
    y_shape = output_shape(shape, stride, padding)
    gather = None
    if need_x:
        gather = _gather_plan(
            y_shape, tuple(shape), stride, padding, bool(quantize), True, None, kernels.storage
        )
    shift_grad = None
    parts = 0
    if need_s:
        parts, reduce, final = _shift_grad_plan(tuple(shape), y_shape, stride, padding)
        final = final._replace(scalars=(*final.scalars, int(normalize), float(t_factor)))
        shift_grad = (reduce, final)
    plan = (kernels, gather, parts, shift_grad, _ACC_DTYPE.get(kernels.storage, torch.float32))
    if len(_BACKWARD_PLANS) >= 1024:
        _BACKWARD_PLANS.clear()
    _BACKWARD_PLANS[key] = plan
    return plan


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
    if not x.is_contiguous():
        x = x.contiguous()
    gy = grad_y
    if gy.dtype != x.dtype:
        gy = gy.to(x.dtype)
    if not gy.is_contiguous():
        gy = gy.contiguous()
    s = _shift_for(shift)
    key = (
        x.shape,
        x.dtype,
        s.dtype,
        tuple(stride),
        tuple(padding),
        quantize,
        normalize_grad,
        normalize_t_factor,
        need_x,
        need_shift,
    )
    plan = _BACKWARD_PLANS.get(key) or _backward_plan(key)
    kernels, gather, parts, shift_grad, acc_dtype = plan
    index = x.get_device()
    previous = _make_current(index)
    try:
        if gather is not None:
            gx = torch.empty_like(x, memory_format=_CONTIGUOUS)
            for step in gather:
                _run(kernels, step, (gy, s, gx), index)
        else:
            gx = x.new_empty(0)
        if shift_grad is not None:
            reduce, final = shift_grad
            channels = x.shape[2]
            partial = x.new_empty(parts * 3 * channels, dtype=acc_dtype)
            _run(kernels, reduce, (gy, x, s, partial), index)
            out = x.new_empty((3, channels), dtype=acc_dtype)
            _run(kernels, final, (partial, s, out), index)
            gs = out if out.dtype == shift.dtype else out.to(shift.dtype)
        else:
            gs = shift.new_empty(0)
    finally:
        if previous >= 0:
            torch.cuda.set_device(previous)
    return gx, gs
