"""On-disk cache of the compiled CUDA kernels (cubins), loaded through the driver.

Entries live in one folder (:func:`cache_dir`: ``$RUBIKS_SHIFT_CACHE_DIR``, else the
user cache folder), one file per kernel, named by a digest of its key: the kernel-
defining sources (the bytes of ``SOURCES``), the compile-time values of the tuning
(``_cuda_tuning.TUNING.kernel_values()``: register caps, unroll groups, row bounds,
reduction widths), kernel name, storage dtypes, GPU compute capability, CUDA driver
version, the versions of Numba and of the CUDA Python packages it compiles with, and the
Numba settings that change CUDA code generation. A
file holds a magic line, a JSON header (the full key, the kernel's entry name, how its
scalar arguments are passed, the payload's size and a SHA-256 over name, arguments and
payload) and the cubin. A reader checks all of it: a truncated, corrupted or stale entry
(another key under the same name) is reported on the ``rubiks_shift`` logger and treated
as missing; the kernel is compiled again and the entry rewritten. Writers write a
temporary file in the same folder and ``os.replace`` it, so readers never see half an
entry, and hold an advisory lock per entry while they compile, so processes that miss
the same entry at once (DDP ranks) compile it once.

Loading needs neither Numba nor PyTorch: ``cuModuleLoadData`` and ``cuModuleGetFunction``
through ctypes, in the device's primary context. Compiling (on a miss) uses Numba exactly
as an uncached launch does (``dispatcher.compile`` for the kernel's one signature, which
also links the cubin for the current device; the entry takes that cubin from the code
library), in this process or in worker processes (:mod:`rubiks_shift._compile_worker`),
one per kernel, in parallel.

This module imports neither torch nor numba at import time: the compile workers import it
without importing the package (see ``_compile_worker``).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rubiks_shift")

FORMAT = 1
MAGIC = b"RUBIKS-SHIFT-CUBIN\n"
ENV = "RUBIKS_SHIFT_CACHE_DIR"
WORKERS_ENV = "RUBIKS_SHIFT_COMPILE_WORKERS"
OFF = ("", "0", "off", "none", "false", "no")  # values of ENV that disable the cache
KERNELS = (
    "gather_frames",
    "gather",
    "grad_shift",
    "finalize",
    "gather_narrow",
    "gather_frames_affine",
    "gather_pixels_affine",
    "gather_affine",
    "gather_narrow_affine",
    "shift_integer",
    "shift_integer_affine",
    "affine_relu",
    "bn_partial",
    "bn_stats",
    "bn_normalize",
    "bn_grad_coefficients",
    "bn_grad_input",
    "bn_channel_forward",
    "bn_channel_backward",
    "stem",
)
# compiled together on a set's first miss, longest first (the one-column gathers, for
# sources one pixel wide, only when a launch needs them): training's kernels, and the
# fused inference form's (``*_affine``) when one of those missed, training batch norm's
# when one of its kernels did
PREFETCH = ("grad_shift", "gather", "gather_frames", "finalize")
PREFETCH_AFFINE = (
    "gather_affine",
    "gather_frames_affine",
    "gather_pixels_affine",
    "shift_integer_affine",
    "affine_relu",
    "stem",
)
PREFETCH_BATCH_NORM = (
    "bn_channel_backward",
    "bn_channel_forward",
    "bn_partial",
    "bn_grad_input",
    "bn_normalize",
    "bn_stats",
    "bn_grad_coefficients",
)
# the files that define the kernels' code (the launch-only tuning fields are not part of
# a kernel, so ``_cuda_tuning.py`` is keyed by its kernel values instead)
SOURCES = (
    "_cuda_device.py",
    "_cuda_scalars.py",
    "_cuda_gather.py",
    "_cuda_pixel_walk.py",
    "_cuda_integer_shift.py",
    "_cuda_shift_grad.py",
    "_cuda_prologue.py",
    "_cuda_batch_norm.py",
    "_cuda_stem.py",
    "_cuda_kernels.py",
)
# distributions whose versions can change the compiled code
DISTRIBUTIONS = (
    "numba",
    "numba-cuda",
    "llvmlite",
    "cuda-bindings",
    "cuda-core",
    "cuda-toolkit",
    "nvidia-nvjitlink",
    "nvidia-nvjitlink-cu12",
    "nvidia-cuda-nvcc",
    "nvidia-cuda-nvcc-cu12",
)
NUMBA_SETTINGS = ("NUMBA_OPT", "NUMBA_DEBUGINFO", "NUMBA_BOUNDSCHECK", "NUMBA_FASTMATH")
ARG_KINDS = {"int64": ctypes.c_int64, "float32": ctypes.c_float, "float64": ctypes.c_double}
_HERE = Path(__file__).resolve().parent


class CacheError(RuntimeError):
    """A kernel could not be compiled into, or loaded from, the cache."""


# ---------------------------------------------------------------- location and key


def cache_dir() -> Path | None:
    """The cache folder: ``$RUBIKS_SHIFT_CACHE_DIR`` where set (one of ``OFF``, e.g.
    ``off`` or ``0``: no cache), else ``$XDG_CACHE_HOME/rubiks-shift/kernels`` or
    ``~/.cache/rubiks-shift/kernels``."""
    value = os.environ.get(ENV)
    if value is not None:
        if value.strip().lower() in OFF:
            return None
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rubiks-shift" / "kernels"


@functools.cache
def source_digest() -> str:
    """SHA-256 over the kernel-defining source files' bytes."""
    digest = hashlib.sha256()
    for name in SOURCES:
        data = (_HERE / name).read_bytes()
        digest.update(f"{name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _tuning() -> dict:
    from ._cuda_tuning import TUNING

    return TUNING.kernel_values()


@functools.cache
def _versions() -> dict:
    from importlib import metadata

    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _settings() -> dict:
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if k in NUMBA_SETTINGS or k.startswith("NUMBA_CUDA_")
    }


def make_key(
    storage: str, shift_storage: str, kernel: str, cc: tuple[int, int], driver: int
) -> dict:
    """The key of one kernel for one device (``cc``, ``driver``: see :func:`device_facts`)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r} (one of {', '.join(KERNELS)})")
    key = {
        "format": FORMAT,
        "kernel": kernel,
        "storage": storage,
        "shift_storage": shift_storage,
        "cc": f"{cc[0]}.{cc[1]}",
        "driver": driver,
        "source": source_digest(),
        "tuning": _tuning(),
        "versions": _versions(),
        "settings": _settings(),
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }
    return json.loads(_canonical(key))  # as read back from a header (tuples as lists)


def _canonical(key: dict) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def entry_path(directory: Path, key: dict) -> Path:
    """The file of ``key``'s entry in ``directory``."""
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:40]
    return directory / f"{key['kernel']}-{key['storage']}-{digest}.cubin"


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """A compiled kernel: its cubin, entry (mangled) name and scalar argument kinds
    (names in ``ARG_KINDS``, in order; pointer arguments are not listed)."""

    image: bytes
    name: str
    args: tuple[str, ...]


def read(path: Path, key: dict) -> Entry | None:
    """The entry at ``path`` if it is complete, intact and for ``key``; else None (the
    reason logged at INFO level, except for a missing file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.info("rubiks-shift: cannot read kernel cache entry %s (%s)", path, e)
        return None
    try:
        return _parse(data, key)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.info("rubiks-shift: ignoring kernel cache entry %s: %s; recompiling", path, e)
        return None


def _parse(data: bytes, key: dict) -> Entry:
    if not data.startswith(MAGIC):
        raise ValueError("not a rubiks-shift kernel entry (bad magic)")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("truncated header")
    header = json.loads(data[len(MAGIC) : end])
    if not isinstance(header, dict) or not isinstance(header.get("key"), dict):
        raise ValueError("malformed header")
    if _canonical(header["key"]) != _canonical(key):
        changed = sorted(
            k for k in set(key) | set(header["key"]) if header["key"].get(k) != key.get(k)
        )
        raise ValueError(f"stale entry (key differs in {', '.join(changed)})")
    payload = data[end + 1 :]
    if len(payload) != header["size"]:
        raise ValueError(f"payload of {len(payload)} bytes, header says {header['size']}")
    name, args = header["name"], header["args"]
    if not isinstance(name, str) or not isinstance(args, list):
        raise ValueError("malformed header")
    if _checksum(name, args, payload) != header["sha256"]:
        raise ValueError("checksum mismatch (corrupted)")
    if not name or any(a not in ARG_KINDS for a in args):
        raise ValueError(f"bad entry name {name!r} or argument kinds {args}")
    return Entry(payload, name, tuple(args))


def _checksum(name: str, args: Sequence[str], payload: bytes) -> str:
    """SHA-256 over an entry's name, argument kinds and payload."""
    digest = hashlib.sha256(json.dumps([name, list(args)]).encode())
    digest.update(payload)
    return digest.hexdigest()


def serialize(key: dict, entry: Entry) -> bytes:
    """The bytes of ``entry``'s file."""
    header = {
        "key": key,
        "name": entry.name,
        "args": list(entry.args),
        "size": len(entry.image),
        "sha256": _checksum(entry.name, entry.args, entry.image),
    }
    return MAGIC + _canonical(header).encode() + b"\n" + entry.image


def write(path: Path, key: dict, entry: Entry) -> None:
    """Write ``entry`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cubin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(serialize(key, entry))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``'s entry (a ``.lock`` file beside it) for
    as long as the block runs; without ``fcntl`` (Windows) or where the lock file cannot
    be made, no lock (the atomic writes alone keep the entry valid)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- driver (no numba)


@functools.cache
def _libcuda():
    return ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")


def _check(result: int, what: str) -> None:
    if result != 0:
        raise CacheError(f"rubiks_shift: {what} failed (CUresult {result})")


@functools.cache
def device_facts(device_index: int) -> tuple[tuple[int, int], int]:
    """(compute capability, CUDA driver version) of device ``device_index``."""
    lib = _libcuda()
    _check(lib.cuInit(0), "cuInit")
    device, major, minor, version = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(device), ctypes.c_int(device_index)), "cuDeviceGet")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device), "cuDeviceGetAttribute")
    _check(lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device), "cuDeviceGetAttribute")
    _check(lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    return (major.value, minor.value), version.value


_modules: list[int] = []  # loaded modules stay loaded for the life of the process


def load(entry: Entry, device_index: int) -> int:
    """Load ``entry``'s cubin into device ``device_index``'s primary context: the kernel's
    CUfunction handle."""
    lib = _libcuda()
    ctx, device = ctypes.c_void_p(), ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(device), ctypes.c_int(device_index)), "cuDeviceGet")
    # retained and never released: the module lives as long as the context
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device), "cuDevicePrimaryCtxRetain")
    _check(lib.cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")
    try:
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        image = ctypes.create_string_buffer(entry.image, len(entry.image))
        _check(lib.cuModuleLoadData(ctypes.byref(module), image), "cuModuleLoadData")
        _modules.append(module.value)
        name = entry.name.encode()
        _check(lib.cuModuleGetFunction(ctypes.byref(function), module, name), "cuModuleGetFunction")
    finally:
        popped = ctypes.c_void_p()
        lib.cuCtxPopCurrent_v2(ctypes.byref(popped))
    return int(function.value)


# ---------------------------------------------------------------- compiling (numba)


def entry_of(compiled) -> Entry | None:
    """The cache entry of a kernel Numba compiled for the current device (a
    ``dispatcher.compile(signature)`` result), or None where its cubin cannot be had or
    does not stand alone (setup functions to run at load)."""
    from numba import types as nt

    library = compiled._codelibrary
    if getattr(library, "_setup_functions", None) or getattr(library, "_teardown_functions", None):
        return None
    name = getattr(library, "_entry_name", None) or getattr(compiled, "entry_name", None)
    args = []
    for ty in compiled.argument_types:
        if isinstance(ty, nt.CPointer):
            continue
        if str(ty) not in ARG_KINDS:
            raise TypeError(f"unsupported kernel argument type {ty}")
        args.append(str(ty))
    try:
        cubin = library.get_cubin()
    except Exception as e:  # an older numba-cuda, a linker without a GPU
        log.debug("rubiks-shift: no cubin from Numba (%s)", e)
        return None
    image = getattr(cubin, "code", cubin)  # cuda.core ObjectCode, or bytes
    if isinstance(image, (bytearray, memoryview)):
        image = bytes(image)
    if not isinstance(image, bytes) or not image or not name:
        return None
    return Entry(image, name, tuple(args))


def compile_kernel(storage: str, shift_storage: str, kernel: str, device_index: int):
    """Compile ``kernel`` of the (storage, shift storage) kernel set with Numba for
    device ``device_index`` (made Numba's current device): the compiled kernel."""
    from . import _cuda_kernels  # before numba.cuda: it gives numpy the alias numba-cuda needs

    _cuda_kernels.cuda.select_device(device_index)
    kernels = _cuda_kernels.Kernels(storage, shift_storage)
    return getattr(kernels, kernel).compile(getattr(kernels, kernel + "_sig"))


def fill(storage: str, shift_storage: str, kernel: str, device_index: int) -> str:
    """Make sure ``kernel``'s entry for device ``device_index`` is in the cache, compiling
    it with Numba if it is not (under the entry's lock): "cached" or "compiled"."""
    directory = cache_dir()
    if directory is None:
        raise CacheError(f"the kernel cache is disabled ({ENV})")
    key = make_key(storage, shift_storage, kernel, *device_facts(device_index))
    path = entry_path(directory, key)
    if read(path, key) is not None:
        return "cached"
    with locked(path):
        if read(path, key) is not None:
            return "cached"
        entry = entry_of(compile_kernel(storage, shift_storage, kernel, device_index))
        if entry is None:
            raise CacheError(f"Numba gave no standalone cubin for {kernel} ({storage})")
        write(path, key, entry)
    return "compiled"


# ---------------------------------------------------------------- worker processes


def worker_count() -> int:
    """Compile worker processes at once: ``$RUBIKS_SHIFT_COMPILE_WORKERS`` (0: compile in
    the calling process), else the CPUs this process may use (at most 8)."""
    value = os.environ.get(WORKERS_ENV)
    if value is not None:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be an integer, got {value!r}") from None
        if count < 0:
            raise ValueError(f"{WORKERS_ENV} must be >= 0, got {count}")
        return count
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


_BOOTSTRAP = (
    "import sys, types; p = types.ModuleType('rubiks_shift'); p.__path__ = [sys.argv[1]]; "
    "sys.modules['rubiks_shift'] = p; from rubiks_shift._compile_worker import main; "
    "sys.exit(main(sys.argv[2:]))"
)


def worker_command(storage: str, shift_storage: str, kernel: str, device_index: int) -> list:
    """The command line of a worker process that fills one entry (it imports numba and
    the kernel modules, not torch nor the package's ``__init__``)."""
    return [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        str(_HERE),
        "--device",
        str(device_index),
        "--storage",
        storage,
        "--shift-storage",
        shift_storage,
        "--kernel",
        kernel,
    ]


@dataclass
class Job:
    """One worker's compile of one entry; ``done`` is set when it has exited."""

    storage: str
    shift_storage: str
    kernel: str
    device: int
    done: threading.Event
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0
    state: str = ""  # what the worker reported: "cached" or "compiled" on success


class Workers:
    """Worker processes compiling entries in parallel, at most ``count`` at once, in
    the order asked (each job is run by a daemon thread, so an exiting interpreter does
    not wait for them; a worker outliving it still finishes its entry)."""

    def __init__(self, count: int) -> None:
        self._slots = threading.Semaphore(max(1, count))
        self._order = threading.Condition()
        self._queue: list[Job] = []
        self.jobs: dict[tuple, Job] = {}

    def submit(self, storage: str, shift_storage: str, kernels: Sequence[str], device: int):
        """Start (or queue) a worker per kernel not yet submitted; the jobs, in order."""
        jobs = []
        for kernel in kernels:
            key = (storage, shift_storage, kernel, device)
            job = self.jobs.get(key)
            if job is None:
                job = self.jobs[key] = Job(
                    storage, shift_storage, kernel, device, threading.Event()
                )
                with self._order:
                    self._queue.append(job)
                threading.Thread(target=self._run, args=(job,), daemon=True).start()
            jobs.append(job)
        return jobs

    def _run(self, job: Job) -> None:
        with self._order:  # start in submission order
            self._order.wait_for(lambda: self._queue[0] is job)
        with self._slots:
            with self._order:
                self._queue.pop(0)
                self._order.notify_all()
            start = time.perf_counter()
            try:
                with tempfile.TemporaryFile() as out:
                    command = worker_command(job.storage, job.shift_storage, job.kernel, job.device)
                    proc = subprocess.run(
                        command, stdout=out, stderr=subprocess.STDOUT, check=False
                    )
                    out.seek(0)
                    job.output = out.read().decode(errors="replace")
                job.returncode = proc.returncode
                states = [x.strip() for x in job.output.splitlines()]
                states = [x for x in states if x in ("cached", "compiled")]
                job.state = states[-1] if states else ""
            except OSError as e:
                job.returncode = -errno.ENOEXEC
                job.output = str(e)
            finally:
                job.seconds = time.perf_counter() - start
                job.done.set()
