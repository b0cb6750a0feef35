"""The CUDA launch path: kernels loaded per device, launched by one driver call.

Numba's dispatcher spends 25-90 us per launch on argument handling (type dispatch,
wrapping each tensor as a device array). Each kernel here has one explicit signature,
loaded on first use per device from the on-disk kernel cache (``_kernel_cache``; compiled
into it on a miss), and is launched by one ctypes call to the driver's
``cuLaunchKernel``, with the argument block built directly from the tensors' data
pointers and the plan step's pre-converted scalars, in the layout Numba's kernel ABI
expects (the kernels take raw pointers: one parameter per tensor). The cost in safety:
nothing checks the arguments at launch, so callers only ever pass contiguous tensors of
the dtypes in the signature, which the wrapper guarantees (and the tests check against
Numba's own launch path on the GPU). Kernels go on torch's current stream, read at every
call, so the op is graph-capturable and never synchronises the host.

Here: ``KernelSet`` (a dtype pair's kernels as the launch path sees them), ``run`` (one
launch of a plan ``Step``), ``_Launcher`` (loading, compiling, preparing argument
blocks), the host thread's CUDA context and the occupancy query that caps grid-stride
grids. Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) ``run`` launches the same
kernels through the ordinary dispatcher on CPU tensors, for tests without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import torch

from . import _kernel_cache
from ._compile_notice import compile_notice

if TYPE_CHECKING:
    from ._cuda_plan import Step

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


def kernel_set(storage: str, shift_storage: str) -> KernelSet:
    """The launch path's kernels of one (storage, shift storage) pair (one per process)."""
    key = (storage, shift_storage)
    if key not in _kernel_sets:
        _kernel_sets[key] = KernelSet(storage, shift_storage)
    return _kernel_sets[key]


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


class LoadedKernel(NamedTuple):
    """A kernel ready on one device: its CUfunction and how each scalar is passed."""

    handle: int
    scalar_kinds: tuple  # ctypes types, in parameter order


class _Prepared(NamedTuple):
    """A plan step made ready to launch on one device from one host thread."""

    handle: int
    pointers: ctypes.Array  # the pointer arguments' slots, rewritten at every launch
    params: ctypes.Array  # the argument block: the slots' addresses, then the scalars'
    head: tuple  # cuLaunchKernel's leading arguments: function, grid, block, shared memory
    scalars: tuple  # the scalars as ctypes objects (kept alive: ``params`` points at them)
    step: Step


class _Launcher:
    """Compiled kernels per device, launched without Numba's per-call dispatch.

    Each (kernel set, plan step, device, host thread) gets one preallocated argument
    block and its launch arguments converted to ctypes once: the pointer slots are
    rewritten and the block handed to cuLaunchKernel (which copies it), so a launch
    builds no Python objects beyond the stream handle and the driver call itself."""

    functions: ClassVar[dict[tuple[int, int], LoadedKernel]] = {}
    loaded: ClassVar[dict[tuple, LoadedKernel]] = {}  # (dtypes, kernel, device)
    entries: ClassVar[dict[tuple, _Prepared]] = {}
    cu_launch = None
    lock = threading.RLock()
    workers: _kernel_cache.Workers | None = None

    @classmethod
    def function(
        cls, dispatcher, signature, device_index: int, label: str = "kernel"
    ) -> LoadedKernel:
        """(kernel handle, how each scalar argument is passed) for ``dispatcher``;
        ``label`` names it in the first-use compile notice."""
        key = (id(dispatcher), device_index)
        fn = cls.functions.get(key)
        if fn is None:
            what = f"the CUDA {label} for device {device_index}"
            with compile_notice(what, key, "once per process and dtype"):
                kernel = dispatcher.compile(signature)
            handle = _function_handle(int(kernel._codelibrary.get_cufunc().handle))
            fn = cls.functions[key] = LoadedKernel(handle, _scalar_kinds(kernel))
        return fn

    @classmethod
    def cached(cls, kernels: KernelSet, name: str, device_index: int) -> LoadedKernel:
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
        return fn

    @classmethod
    def _load_or_compile(cls, kernels: KernelSet, name: str, index: int) -> LoadedKernel:
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
    def _through_cache(cls, kernels, name, index, label, directory) -> LoadedKernel:
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
                return LoadedKernel(handle, tuple(kc.ARG_KINDS[a] for a in entry.args))
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
                fn = LoadedKernel(kc.load(entry, index), tuple(kc.ARG_KINDS[a] for a in entry.args))
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
        group = kc.PREFETCH
        for prefetch in (kc.PREFETCH_AFFINE, kc.PREFETCH_BATCH_NORM):
            group = prefetch if name in prefetch else group
        for other in group:
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
        the cache, or (None, the kernel loaded) from Numba's own module where
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
                return None, LoadedKernel(handle, _scalar_kinds(compiled))
            try:
                kc.write(path, ckey, entry)
            except OSError as e:
                kc.log.info("rubiks-shift: cannot write kernel cache entry %s (%s)", path, e)
        return entry, None

    @classmethod
    def prepare(cls, kernels: KernelSet, step: Step, n_ptrs: int, device_index: int) -> _Prepared:
        """``step`` made ready to launch on device ``device_index`` from this host thread
        (remembered in ``entries``)."""
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
        if cls.cu_launch is None:  # every launch goes through a prepared step: bound here
            cls.cu_launch = _cu_launch_kernel()
        grid = _launch_grid(step, handle, device_index)
        dims = (*grid, *step.block, 0)  # grid, block, dynamic shared memory
        head = (ctypes.c_void_p(handle), *(ctypes.c_uint(d) for d in dims))
        entry = _Prepared(handle, pointers, params, head, objs, step)
        if len(cls.entries) >= 4096:  # plans evicted from their caches leave stale entries
            cls.entries.clear()
        cls.entries[(id(kernels), id(step), device_index, threading.get_ident())] = entry
        return entry


def run(kernels: KernelSet, step: Step, tensors: Sequence[torch.Tensor], index: int) -> None:
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
    if entry is None or entry.step is not step:
        entry = _Launcher.prepare(kernels, step, len(tensors), index)
    pointers = entry.pointers
    for i, t in enumerate(tensors):
        pointers[i] = t.data_ptr()
    stream = ctypes.c_void_p(torch._C._cuda_getCurrentRawStream(index))
    result = _Launcher.cu_launch(*entry.head, stream, entry.params, None)
    if result == _CUDA_ERROR_INVALID_CONTEXT:  # the thread's context was taken away since
        _ensure_context(index)
        result = _Launcher.cu_launch(*entry.head, stream, entry.params, None)
    if result != 0:
        raise RuntimeError(f"rubiks_shift: cuLaunchKernel({step.name}) failed (CUresult {result})")


def bind(
    kernels: KernelSet, steps: Sequence[Step], n_ptrs: int, index: int
) -> Callable[..., None] | None:
    """``run`` of each of ``steps`` in turn, made ready once for device ``index`` and this
    host thread: call the result with the ``n_ptrs`` pointer arguments' addresses (ints)
    on that thread, with device ``index`` current. None under the CUDA simulator."""
    if simulator_enabled():
        return None
    prepared = tuple(_Launcher.prepare(kernels, step, n_ptrs, index) for step in steps)
    launch = _Launcher.cu_launch
    current_stream = torch._C._cuda_getCurrentRawStream

    def bound(*addresses: int) -> None:
        stream = ctypes.c_void_p(current_stream(index))
        for entry in prepared:
            entry.pointers[:] = addresses
            result = launch(*entry.head, stream, entry.params, None)
            if result == _CUDA_ERROR_INVALID_CONTEXT:
                _ensure_context(index)
                result = launch(*entry.head, stream, entry.params, None)
            if result != 0:
                name = entry.step.name
                raise RuntimeError(
                    f"rubiks_shift: cuLaunchKernel({name}) failed (CUresult {result})"
                )

    return bound


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The elements of a dense tensor in storage order, as a view (the simulator's kernels
    write through it): a channel-major clip flattens to its (C, N, T, H, W) order."""
    t = t.as_strided((t.numel(),), (1,)) if not t.is_contiguous() else t.reshape(-1)
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t
