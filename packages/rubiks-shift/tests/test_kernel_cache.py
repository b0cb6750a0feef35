"""The on-disk CUDA kernel cache, on CPU: keys, entries, corruption, concurrency, the
launch path's hit / miss / fallback logic (with stand-in kernels and driver) and the
warmup CLI's argument errors."""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rubiks_shift import _compile_notice, _cuda_tuning, _kernel_cache, warmup

pytest.importorskip("numba.cuda")
from rubiks_shift import _cuda_launch

KEY_ARGS = ("float32", "float32", "gather", (9, 0), 12080)
ENTRY = _kernel_cache.Entry(bytes(range(256)) * 40, "_Zkernel", ("int64", "float64"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, selected through the environment variable."""
    folder = tmp_path / "kernels"
    monkeypatch.setenv(_kernel_cache.ENV, str(folder))
    return folder


def _write_entry(folder: Path, key: dict | None = None, entry=ENTRY) -> tuple[Path, dict]:
    key = key or _kernel_cache.make_key(*KEY_ARGS)
    path = _kernel_cache.entry_path(folder, key)
    _kernel_cache.write(path, key, entry)
    return path, key


# ---------------------------------------------------------------- location and key


def test_cache_dir_default_env_override_and_disable(tmp_path, monkeypatch):
    monkeypatch.delenv(_kernel_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _kernel_cache.cache_dir() == tmp_path / "xdg" / "rubiks-shift" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _kernel_cache.cache_dir() == tmp_path / "home" / ".cache" / "rubiks-shift" / "kernels"
    monkeypatch.setenv(_kernel_cache.ENV, str(tmp_path / "mine"))
    assert _kernel_cache.cache_dir() == tmp_path / "mine"
    for off in ("off", "0", "", "None", "false"):
        monkeypatch.setenv(_kernel_cache.ENV, off)
        assert _kernel_cache.cache_dir() is None


def test_key_covers_source_tuning_device_and_versions(monkeypatch):
    key = _kernel_cache.make_key(*KEY_ARGS)
    assert key["source"] == _kernel_cache.source_digest()
    assert key["tuning"]["frame_walk_registers"] == _cuda_tuning.TUNING.frame_walk_registers
    assert key["versions"]["numba"] and key["versions"]["numba-cuda"]
    folder = Path("/c")
    path = _kernel_cache.entry_path(folder, key)
    others = [
        _kernel_cache.make_key("bfloat16", "float32", "gather", (9, 0), 12080),
        _kernel_cache.make_key("float32", "float64", "gather", (9, 0), 12080),
        _kernel_cache.make_key("float32", "float32", "grad_shift", (9, 0), 12080),
        _kernel_cache.make_key("float32", "float32", "gather", (8, 0), 12080),
        _kernel_cache.make_key("float32", "float32", "gather", (9, 0), 12090),
    ]
    launch_only = replace(_cuda_tuning.TUNING, frame_walk_threads=256, row_walk_waves=0)
    monkeypatch.setattr(_cuda_tuning, "TUNING", launch_only)  # launches, not kernels, change
    assert _kernel_cache.make_key(*KEY_ARGS) == key
    cap = replace(_cuda_tuning.TUNING, row_walk_registers=64)  # a register cap changed
    monkeypatch.setattr(_cuda_tuning, "TUNING", cap)
    others.append(_kernel_cache.make_key(*KEY_ARGS))
    monkeypatch.setenv("NUMBA_CUDA_DEBUGINFO", "1")  # a code-generation setting
    others.append(_kernel_cache.make_key(*KEY_ARGS))
    paths = {_kernel_cache.entry_path(folder, k) for k in others}
    assert path not in paths and len(paths) == len(others)
    with pytest.raises(ValueError, match="unknown kernel"):
        _kernel_cache.make_key("float32", "float32", "gatherer", (9, 0), 1)


def test_source_digest_changes_with_the_kernel_sources(tmp_path, monkeypatch):
    for name in _kernel_cache.SOURCES:
        (tmp_path / name).write_bytes((_kernel_cache._HERE / name).read_bytes())
    monkeypatch.setattr(_kernel_cache, "_HERE", tmp_path)
    _kernel_cache.source_digest.cache_clear()
    try:
        before = _kernel_cache.source_digest()
        _kernel_cache.source_digest.cache_clear()
        with (tmp_path / "_cuda_gather.py").open("a") as f:
            f.write("\n# an edit\n")
        assert _kernel_cache.source_digest() != before
    finally:
        monkeypatch.undo()
        _kernel_cache.source_digest.cache_clear()


# ---------------------------------------------------------------- entries


def test_entry_round_trip_and_atomic_write(cache):
    path, key = _write_entry(cache)
    assert _kernel_cache.read(path, key) == ENTRY
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left
    assert _kernel_cache.read(cache / "missing.cubin", key) is None


def _mutations(data: bytes, header_end: int):
    yield "flipped payload byte", data[:-7] + bytes([data[-7] ^ 0x40]) + data[-6:]
    yield "truncated payload", data[:-100]
    yield "truncated header", data[: header_end - 10]
    yield "empty", b""
    yield "bad magic", b"X" + data[1:]
    yield "appended bytes", data + b"\0"
    name_at = data.index(b"_Zkernel")
    yield "renamed entry", data[:name_at] + b"_Zkernem" + data[name_at + 8 :]


def test_corrupted_entries_are_detected_and_not_loaded(cache, caplog):
    path, key = _write_entry(cache)
    data = path.read_bytes()
    header_end = data.index(b"\n", len(_kernel_cache.MAGIC))
    caplog.set_level(logging.INFO, logger="rubiks_shift")
    for what, bad in _mutations(data, header_end):
        path.write_bytes(bad)
        caplog.clear()
        assert _kernel_cache.read(path, key) is None, what
        assert "ignoring kernel cache entry" in caplog.text, what


def test_stale_entry_of_another_key_is_rejected(cache, caplog):
    path, key = _write_entry(cache)
    stale = dict(key, driver=key["driver"] + 10)  # same file name, another driver
    caplog.set_level(logging.INFO, logger="rubiks_shift")
    assert _kernel_cache.read(path, stale) is None
    assert "stale entry (key differs in driver)" in caplog.text
    newer = dict(key, versions=dict(key["versions"], **{"numba-cuda": "99.0"}))
    assert _kernel_cache.read(path, newer) is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_single_byte_change_is_detected(data):
    key = _kernel_cache.make_key(*KEY_ARGS)
    blob = _kernel_cache.serialize(key, ENTRY)
    at = data.draw(st.integers(0, len(blob) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor mask")
    bad = blob[:at] + bytes([blob[at] ^ mask]) + blob[at + 1 :]
    with pytest.raises((ValueError, KeyError, TypeError, AttributeError)):
        _kernel_cache._parse(bad, key)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rubiks_shift import _kernel_cache as kc
    key = kc.make_key("float32", "float32", "gather", (9, 0), 12080)
    entry = kc.Entry(bytes(range(256)) * 4096, "_Zkernel", ("int64",))
    path = kc.entry_path(Path(sys.argv[1]), key)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.001)
    for _ in range(25):
        kc.write(path, key, entry)
    """
)


def test_concurrent_writers_leave_a_valid_entry(tmp_path):
    """Four processes rewrite one 1 MiB entry 25 times each while this one reads it: a
    reader sees no entry or the whole entry, never a partial one."""
    folder, go = tmp_path / "kernels", tmp_path / "go"
    key = _kernel_cache.make_key("float32", "float32", "gather", (9, 0), 12080)
    entry = _kernel_cache.Entry(bytes(range(256)) * 4096, "_Zkernel", ("int64",))
    path = _kernel_cache.entry_path(folder, key)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), str(go)]) for _ in range(4)
    ]
    go.touch()
    reads = 0
    while any(p.poll() is None for p in procs):
        if path.exists():
            assert _kernel_cache._parse(path.read_bytes(), key) == entry  # never partial
            reads += 1
    assert all(p.wait() == 0 for p in procs)
    assert _kernel_cache.read(path, key) == entry
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary files
    assert reads > 0


_LOCKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from rubiks_shift import _kernel_cache as kc
    with kc.locked(Path(sys.argv[1])):
        with open(sys.argv[2], "a") as f:
            f.write(f"start {os.getpid()}\\n")
        time.sleep(0.3)
        with open(sys.argv[2], "a") as f:
            f.write(f"end {os.getpid()}\\n")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks need fcntl")
def test_entry_lock_serialises_processes(tmp_path):
    entry, log = tmp_path / "kernels" / "x.cubin", tmp_path / "log"
    procs = [
        subprocess.Popen([sys.executable, "-c", _LOCKER, str(entry), str(log)]) for _ in range(3)
    ]
    assert all(p.wait() == 0 for p in procs)
    lines = log.read_text().split()
    pairs = [(lines[i], lines[i + 1], lines[i + 2], lines[i + 3]) for i in range(0, 12, 4)]
    for start, pid, end, pid_again in pairs:  # each holder finished before the next began
        assert (start, end, pid) == ("start", "end", pid_again)


# ---------------------------------------------------------------- the launch path


class FakeDispatcher:
    """A stand-in Numba dispatcher: ``compile`` returns a kernel whose code library
    gives a cubin (``cubin=None``: none, as an older numba-cuda)."""

    def __init__(self, cubin=b"\x7fELF-fake-cubin", delay=0.0):
        self.cubin, self.delay, self.compiles = cubin, delay, 0

    def compile(self, signature):
        time.sleep(self.delay)
        self.compiles += 1

        def get_cubin():
            if self.cubin is None:
                raise RuntimeError("no linker")
            return SimpleNamespace(code=self.cubin)

        library = SimpleNamespace(
            get_cubin=get_cubin,
            get_cufunc=lambda: SimpleNamespace(handle=4321),
            _entry_name="_Zfake_gather",
            _setup_functions=[],
            _teardown_functions=[],
        )
        return SimpleNamespace(argument_types=signature, _codelibrary=library)


def _kernel_set(dispatcher) -> _cuda_launch.KernelSet:
    from numba import types as nt

    kernels = _cuda_launch.KernelSet("float32", "float32")
    sig = (nt.CPointer(nt.float32), nt.CPointer(nt.float32), nt.int64, nt.float64)
    kernels._built = SimpleNamespace(gather=dispatcher, gather_sig=sig)
    return kernels


@pytest.fixture
def launcher(cache, monkeypatch):
    """The launch path with a stand-in driver: loading an entry records it and returns
    a handle; compile workers off unless a test turns them on."""
    loads = []

    def load(entry, index):
        loads.append((entry, index))
        return 1000 + len(loads)

    monkeypatch.setattr(_kernel_cache, "device_facts", lambda index: ((9, 0), 12080))
    monkeypatch.setattr(_kernel_cache, "load", load)
    monkeypatch.setattr(_cuda_launch, "_function_handle", lambda handle: handle)
    monkeypatch.setenv(_kernel_cache.WORKERS_ENV, "0")
    for name, value in (("functions", {}), ("loaded", {}), ("entries", {}), ("workers", None)):
        monkeypatch.setattr(_cuda_launch._Launcher, name, value)  # all restored after the test
    monkeypatch.setattr(_compile_notice, "_finished", set())
    return loads


def _entry_file(cache: Path) -> Path:
    (path,) = [p for p in cache.iterdir() if p.suffix == ".cubin"]
    return path


def test_miss_compiles_and_caches_then_a_new_process_loads_without_compiling(cache, launcher):
    first = FakeDispatcher()
    handle, kinds = _cuda_launch._Launcher.cached(_kernel_set(first), "gather", 0)
    assert first.compiles == 1 and handle == 1001
    assert kinds == (ctypes.c_int64, ctypes.c_double)
    entry, index = launcher[0]
    assert (entry.image, entry.name, entry.args, index) == (
        b"\x7fELF-fake-cubin", "_Zfake_gather", ("int64", "float64"), 0
    )  # fmt: skip
    assert _cuda_launch._Launcher.cached(_kernel_set(first), "gather", 0) == (1001, kinds)  # memo
    _cuda_launch._Launcher.loaded.clear()  # a new process: nothing in memory
    second = FakeDispatcher(cubin=b"never used")
    assert _cuda_launch._Launcher.cached(_kernel_set(second), "gather", 0) == (1002, kinds)
    assert second.compiles == 0 and launcher[1][0] == entry


@pytest.mark.parametrize("damage", ["flip", "truncate", "stale"])
def test_a_bad_entry_is_recompiled_and_rewritten(cache, launcher, caplog, damage):
    _cuda_launch._Launcher.cached(_kernel_set(FakeDispatcher(b"old-cubin")), "gather", 0)
    path = _entry_file(cache)
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # same file name, written for another key
        _, key = _write_entry(cache, _kernel_cache.make_key(*KEY_ARGS))
        path.write_bytes(_kernel_cache.serialize(dict(key, driver=1), ENTRY))
    _cuda_launch._Launcher.loaded.clear()
    caplog.set_level(logging.INFO, logger="rubiks_shift")
    again = FakeDispatcher(b"new-cubin")
    _cuda_launch._Launcher.cached(_kernel_set(again), "gather", 0)
    assert again.compiles == 1
    assert launcher[-1][0].image == b"new-cubin"  # the recompiled kernel, not the bad one
    assert "ignoring kernel cache entry" in caplog.text
    key = _kernel_cache.make_key("float32", "float32", "gather", (9, 0), 12080)
    assert _kernel_cache.read(path, key).image == b"new-cubin"  # rewritten


def test_disabled_cache_compiles_in_process_with_numbas_handle(cache, launcher, monkeypatch):
    monkeypatch.setenv(_kernel_cache.ENV, "off")
    dispatcher = FakeDispatcher()
    handle, _kinds = _cuda_launch._Launcher.cached(_kernel_set(dispatcher), "gather", 0)
    assert (handle, dispatcher.compiles, launcher) == (4321, 1, [])
    assert not cache.exists()


def test_no_cubin_from_numba_falls_back_to_numbas_handle(cache, launcher):
    dispatcher = FakeDispatcher(cubin=None)
    handle, _ = _cuda_launch._Launcher.cached(_kernel_set(dispatcher), "gather", 0)
    assert (handle, dispatcher.compiles, launcher) == (4321, 1, [])
    assert not any(p.suffix == ".cubin" for p in cache.glob("*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the worker must fail (no GPU)")
def test_a_failed_compile_worker_falls_back_to_this_process(cache, launcher, monkeypatch, caplog):
    monkeypatch.setenv(_kernel_cache.WORKERS_ENV, "2")
    caplog.set_level(logging.INFO, logger="rubiks_shift")
    dispatcher = FakeDispatcher()
    handle, _ = _cuda_launch._Launcher.cached(_kernel_set(dispatcher), "gather", 0)
    assert dispatcher.compiles == 1 and handle == 1001
    assert "the compile worker for gather failed (exit status 1)" in caplog.text
    jobs = _cuda_launch._Launcher.workers.jobs
    assert {k[2] for k in jobs} == set(_kernel_cache.PREFETCH)  # the set was started
    for job in jobs.values():
        assert job.done.wait(120)


def test_notice_says_compiling_or_loading_from_the_cache(cache, launcher, monkeypatch, caplog):
    monkeypatch.setattr(_compile_notice, "DELAY_S", 0.05)
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    _cuda_launch._Launcher.cached(_kernel_set(FakeDispatcher(delay=1.0)), "gather", 0)
    _cuda_launch._Launcher.loaded.clear()
    monkeypatch.setattr(_compile_notice, "_finished", set())

    def slow_load(entry, index):
        time.sleep(1.0)  # far past the delay, even on a loaded machine
        return 7

    monkeypatch.setattr(_kernel_cache, "load", slow_load)
    _cuda_launch._Launcher.cached(_kernel_set(FakeDispatcher()), "gather", 0)
    what = "the CUDA gather kernel for float32 (shift float32) for device 0"
    assert [r.getMessage() for r in caplog.records if r.name == "rubiks_shift"] == [
        f"rubiks-shift: compiling {what} with Numba (once per machine and dtype; cached in "
        f"{cache}) ...",
        f"rubiks-shift: loading {what} from the kernel cache in {cache} ...",
    ]


def test_worker_runs_without_torch_and_reports_errors(cache):
    """The worker's stand-in package imports the kernel modules, not torch; without a
    GPU it exits with status 1 and the reason."""
    command = _kernel_cache.worker_command("float32", "float32", "finalize", 0)
    done = subprocess.run([*command[:1], "-X", "importtime", *command[1:]], capture_output=True)
    imported = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()}
    assert "rubiks_shift._kernel_cache" in imported
    assert "torch" not in imported
    if not torch.cuda.is_available():
        assert done.returncode == 1
        assert "libcuda" in done.stderr.decode() or "CacheError" in done.stderr.decode()
    bad = subprocess.run([*command[:-1], "gatherer"], capture_output=True)
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr
    # what a worker imports to compile: the kernel modules, without torch
    stub = command[2].split("from rubiks_shift._compile_worker")[0]
    code = stub + "import rubiks_shift._cuda_kernels, rubiks_shift._cuda_gather"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, command[3]], capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()}
    assert "rubiks_shift._cuda_gather" in imported and "torch" not in imported


# ---------------------------------------------------------------- warmup CLI


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dtypes", "float8"], "invalid choice: 'float8'"),
        (["--dtypes"], "expected at least one argument"),
        (["--device", "gpu"], "expected a device index"),
        (["--device", "-1"], "expected a device index"),
        (["--jobs", "-2"], "expected 0 (in this process) or more"),
        (["--jobs", "many"], "expected an integer"),
        (["--kernels", "gatherer"], "invalid choice: 'gatherer'"),
        (["--cpu", "--device", "0"], "--device apply to the CUDA kernels"),
        (["--cpu", "--kernels", "gather"], "--kernels apply to the CUDA kernels"),
        (["--cpu", "--clear"], "--clear apply to the CUDA kernels"),
        (["--cpu", "--jobs", "-1"], "expected 0 (in this process) or more"),
    ],
)
def test_warmup_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        warmup.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_warmup_refuses_without_a_cache_or_under_the_simulator(monkeypatch, capsys):
    monkeypatch.setenv(_kernel_cache.ENV, "off")
    with pytest.raises(SystemExit) as exit_:
        warmup.main([])
    assert exit_.value.code == 2
    assert "the kernel cache is disabled" in capsys.readouterr().err
    assert warmup.main(["--if-available"]) == 0
    assert "skipped: the kernel cache is disabled" in capsys.readouterr().out
    monkeypatch.setenv(_kernel_cache.ENV, "/tmp/x")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(SystemExit):
        warmup.main([])
    assert "simulator" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_warmup_without_a_gpu(cache, capsys):
    with pytest.raises(SystemExit) as exit_:
        warmup.main(["--dtypes", "float32"])
    assert exit_.value.code == 2 and "no CUDA device 0" in capsys.readouterr().err
    assert warmup.main(["--if-available"]) == 0


def test_warmup_kernel_sets():
    assert warmup.kernel_sets(["float32", "bfloat16", "float32"]) == [
        ("float32", "float32"),
        ("bfloat16", "float32"),
    ]
    assert warmup.kernel_sets(["float64"]) == [("float64", "float32"), ("float64", "float64")]


def test_an_entry_the_driver_refuses_is_recompiled(cache, launcher, monkeypatch, caplog):
    _cuda_launch._Launcher.cached(_kernel_set(FakeDispatcher(b"refused")), "gather", 0)
    _cuda_launch._Launcher.loaded.clear()
    real = _kernel_cache.load

    def picky(entry, index):
        if entry.image == b"refused":
            raise _kernel_cache.CacheError("cuModuleLoadData failed (CUresult 200)")
        return real(entry, index)

    monkeypatch.setattr(_kernel_cache, "load", picky)
    caplog.set_level(logging.INFO, logger="rubiks_shift")
    again = FakeDispatcher(b"accepted")
    _cuda_launch._Launcher.cached(_kernel_set(again), "gather", 0)
    assert again.compiles == 1 and launcher[-1][0].image == b"accepted"
    assert "CUresult 200" in caplog.text


def test_no_usable_driver_query_compiles_without_the_cache(cache, launcher, monkeypatch):
    def broken(index):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(_kernel_cache, "device_facts", broken)
    dispatcher = FakeDispatcher()
    handle, _ = _cuda_launch._Launcher.cached(_kernel_set(dispatcher), "gather", 0)
    assert (handle, dispatcher.compiles, launcher) == (4321, 1, [])


@pytest.fixture
def numba_without_gpu(monkeypatch):
    """Numba compiling CUDA kernels for compute capability 9.0 with no GPU: the device
    queries answered, the driver's module load skipped (nvJitLink links the cubin)."""
    from numba import cuda
    from numba.cuda import codegen, dispatcher
    from numba.cuda.cudadrv import driver

    if not driver._have_nvjitlink():
        pytest.skip("needs nvJitLink to link a cubin without a GPU")
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: SimpleNamespace(
        compute_capability=(9, 0)))  # fmt: skip
    monkeypatch.setattr(dispatcher._Kernel, "bind", lambda self: None)
    monkeypatch.setattr(codegen.CUDACodeLibrary, "_ensure_cc", lambda self, cc: cc or (9, 0, "a"))
    monkeypatch.setattr(cuda, "select_device", lambda index: None)
    monkeypatch.setattr(_kernel_cache, "device_facts", lambda index: ((9, 0), 12080))


def test_fill_compiles_a_real_kernel_into_a_loadable_entry(cache, numba_without_gpu):
    """Numba's compiled kernel gives the entry: a cubin, the mangled entry name, the
    scalar argument kinds of the signature; a second fill finds it cached."""
    assert _kernel_cache.fill("float32", "float32", "finalize", 0) == "compiled"
    key = _kernel_cache.make_key("float32", "float32", "finalize", (9, 0), 12080)
    entry = _kernel_cache.read(_kernel_cache.entry_path(cache, key), key)
    assert entry.image.startswith(b"\x7fELF")
    assert entry.name.startswith("_ZN") and "finalize" in entry.name
    assert entry.args == ("int64", "int64", "int64", "float32")  # C, parts, normalize, t
    assert _kernel_cache.fill("float32", "float32", "finalize", 0) == "cached"


def test_warmup_progress_counts_and_failures(cache, monkeypatch, capsys):
    """In-process warmup (--jobs 0) with a stand-in compile: one line per kernel, cached
    entries only checked, a failed kernel reported and the exit status 1."""
    monkeypatch.setattr(_kernel_cache, "device_facts", lambda index: ((9, 0), 12080))
    monkeypatch.setattr(warmup, "_unavailable", lambda args: None)

    def fill(storage, shift, kernel, index):
        if kernel == "finalize":
            raise _kernel_cache.CacheError("no standalone cubin")
        key = _kernel_cache.make_key(storage, shift, kernel, (9, 0), 12080)
        _kernel_cache.write(_kernel_cache.entry_path(cache, key), key, ENTRY)
        return "compiled"

    monkeypatch.setattr(_kernel_cache, "fill", fill)
    assert warmup.main(["--dtypes", "float32", "--jobs", "0"]) == 1
    out = capsys.readouterr()
    total = len(_kernel_cache.KERNELS)
    assert f"{total - 1} compiled, 0 already cached, 1 failed" in out.out
    assert "CacheError: no standalone cubin" in out.err
    assert out.out.count(" compiled in ") == total - 1 and f"[{total:>2}/{total}]" in out.out
    assert warmup.main(["--dtypes", "float32", "--jobs", "0", "--kernels", "gather"]) == 0
    assert "0 compiled, 1 already cached, 0 failed" in capsys.readouterr().out


_FAKE_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from rubiks_shift import _kernel_cache as kc
    storage, shift, kernel = sys.argv[1:4]
    key = kc.make_key(storage, shift, kernel, (9, 0), 12080)
    entry = kc.Entry(f"cubin of {kernel}".encode(), "_Z" + kernel, ("int64",))
    kc.write(kc.entry_path(kc.cache_dir(), key), key, entry)
    print("compiled")
    """
)


def test_workers_compile_the_set_and_this_process_only_loads(cache, launcher, monkeypatch):
    """With compile workers (stand-ins that write entries) the launching process compiles
    nothing: it loads the worker's entry, and the set's other kernels are cached too."""
    monkeypatch.setenv(_kernel_cache.WORKERS_ENV, "4")
    monkeypatch.setattr(_kernel_cache, "worker_command", lambda s, t, k, i: [
        sys.executable, "-c", _FAKE_WORKER, s, t, k])  # fmt: skip
    dispatcher = FakeDispatcher()
    _cuda_launch._Launcher.cached(_kernel_set(dispatcher), "gather", 0)
    assert dispatcher.compiles == 0
    assert launcher[0][0].image == b"cubin of gather"
    for job in _cuda_launch._Launcher.workers.jobs.values():
        assert job.done.wait(120) and job.state == "compiled"
    names = sorted(p.name.split("-")[0] for p in cache.glob("*.cubin"))
    assert names == sorted(_kernel_cache.PREFETCH)
