"""Compile the CUDA kernels into the on-disk kernel cache ahead of time.

    python -m rubiks_shift.warmup [--dtypes float32 bfloat16 ...] [--device 0] [--jobs N]
    python -m rubiks_shift.warmup --cpu [--dtypes float32 float64] [--jobs N]

Every kernel the op launches (the gathers, the shift gradient and its finalize) for each
storage dtype asked, for the GPU ``--device`` (its architecture and driver are part of
the cache key), in parallel worker processes (Numba compiles one kernel at a time, on one
core, holding the GIL). Kernels already cached are only checked. Afterwards every process
on this machine (DDP ranks, evaluation workers) loads them in milliseconds. The cache
folder is ``$RUBIKS_SHIFT_CACHE_DIR``, else ``~/.cache/rubiks-shift/kernels``.

With ``--cpu``, the CPU kernels instead (forward and backward per compute dtype: float64
for float64, float32 for the rest), into Numba's own disk cache, in parallel workers too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from . import _cpu_warmup
from . import _kernel_cache as kc

DTYPES = ("float32", "bfloat16", "float16", "float64")
DEFAULT_DTYPES = ("float32", "bfloat16")


def kernel_sets(dtypes: list[str]) -> list[tuple[str, str]]:
    """The (storage, shift storage) pairs the op uses for tensors of ``dtypes``: shifts
    are float32 for every storage (the op converts a half-precision shift to float32),
    and float64 too for float64 storage (a float64 model)."""
    pairs = []
    for dtype in dtypes:
        for shift in ("float32", "float64") if dtype == "float64" else ("float32",):
            if (dtype, shift) not in pairs:
                pairs.append((dtype, shift))
    return pairs


def _device(text: str) -> int:
    digits = text.removeprefix("cuda:")
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected a device index such as 0 or cuda:1, got {text!r}"
        )
    return int(digits)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (in this process) or more, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rubiks_shift.warmup", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=list(DEFAULT_DTYPES), metavar="DTYPE",
        help=f"storage dtypes to compile for ({', '.join(DTYPES)}; default: "
        f"{' '.join(DEFAULT_DTYPES)})",
    )  # fmt: skip
    p.add_argument(
        "--cpu", action="store_true",
        help="compile the CPU kernels (Numba's cache) instead of the CUDA kernels",
    )  # fmt: skip
    p.add_argument(
        "--device", type=_device, default=None, help="CUDA device index (default 0)"
    )  # fmt: skip
    p.add_argument(
        "--jobs", type=_jobs, default=None,
        help="worker processes at once (default: the CPUs, at most 8; 0: this process)",
    )  # fmt: skip
    p.add_argument(
        "--kernels", nargs="+", choices=kc.KERNELS, default=None, metavar="KERNEL",
        help=f"CUDA kernels to compile (default all: {', '.join(kc.KERNELS)})",
    )  # fmt: skip
    p.add_argument(
        "--if-available", action="store_true",
        help="where there is no GPU, no numba-cuda or no cache: say so in one line and "
        "exit with status 0",
    )  # fmt: skip
    p.add_argument(
        "--clear", action="store_true",
        help="empty the cache folder first (e.g. after a CUDA toolkit change outside pip)",
    )  # fmt: skip
    return p


def _unavailable(args) -> str | None:
    """Why nothing can be warmed here, or None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0"):
        return "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM): it uses no kernel cache"
    if kc.cache_dir() is None:
        return f"the kernel cache is disabled ({kc.ENV}={os.environ.get(kc.ENV)!r})"
    from importlib import util

    if util.find_spec("numba_cuda") is None and util.find_spec("numba.cuda") is None:
        return "numba-cuda is not installed (pip install 'rubiks-shift[cuda]')"
    try:
        kc.device_facts(args.device)
    except (OSError, kc.CacheError) as e:
        return f"no CUDA device {args.device} ({e})"
    return None


class _Progress:
    """A line per kernel as it finishes (count, elapsed time, what, state), the counts,
    and the closing summary; the exit status is 1 where one failed."""

    def __init__(self, total: int, width: int) -> None:
        self.total, self.width = total, width
        self.counts = {"cached": 0, "compiled": 0, "failed": 0}
        self.start = time.perf_counter()

    def report(self, what: str, state: str, seconds: float) -> None:
        key = state if state in self.counts else "failed"
        self.counts[key] += 1
        elapsed = time.perf_counter() - self.start
        took = f" in {seconds:.1f} s" if key == "compiled" else ""
        done = sum(self.counts.values())
        print(
            f"[{done:>{self.width}}/{self.total}] {elapsed:6.1f} s  {what} {key}{took}", flush=True
        )

    def finish(self) -> int:
        c = self.counts
        print(
            f"rubiks-shift warmup: {c['compiled']} compiled, {c['cached']} already cached, "
            f"{c['failed']} failed, in {time.perf_counter() - self.start:.1f} s",
            flush=True,
        )
        return 1 if c["failed"] else 0


def _warm_cpu(args) -> int:
    dtypes = _cpu_warmup.compute_dtypes(args.dtypes)
    jobs = kc.worker_count() if args.jobs is None else args.jobs
    progress = _Progress(len(dtypes) * len(_cpu_warmup.KERNELS), width=1)
    print(
        f"rubiks-shift warmup: {progress.total} CPU kernels ({', '.join(dtypes)}) into "
        f"Numba's cache, {jobs or 'no'} worker processes",
        flush=True,
    )

    def report(kernel: str, dtype: str, state: str, seconds: float) -> None:
        progress.report(f"{dtype:<8} {kernel:<18}", state, seconds)
        if state.startswith("failed: "):
            print(f"  {state.removeprefix('failed: ')}", file=sys.stderr)

    _cpu_warmup.run(args.dtypes, jobs, report)
    return progress.finish()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.cpu:
        cuda_only = (("--device", args.device), ("--kernels", args.kernels))
        given = [option for option, value in cuda_only if value is not None]
        given += ["--clear"] if args.clear else []
        if given:
            p.error(f"{' and '.join(given)} apply to the CUDA kernels, not with --cpu")
        return _warm_cpu(args)
    args.device = 0 if args.device is None else args.device
    args.kernels = list(kc.KERNELS) if args.kernels is None else args.kernels
    reason = _unavailable(args)
    if reason is not None:
        if args.if_available:
            print(f"rubiks-shift warmup: skipped: {reason}")
            return 0
        p.error(reason)
    directory = kc.cache_dir()
    if args.clear and directory.exists():
        shutil.rmtree(directory)
    cc, driver = kc.device_facts(args.device)
    todo = [(s, t, k) for s, t in kernel_sets(args.dtypes) for k in args.kernels]
    jobs = kc.worker_count() if args.jobs is None else args.jobs
    progress = _Progress(len(todo), width=2)
    print(
        f"rubiks-shift warmup: {len(todo)} kernels for device {args.device} (compute "
        f"capability {cc[0]}.{cc[1]}, driver {driver}) into {directory}, "
        f"{jobs or 'no'} worker processes",
        flush=True,
    )

    def report(storage: str, shift: str, kernel: str, state: str, seconds: float) -> None:
        progress.report(f"{storage:<8} (shift {shift:<7}) {kernel:<20}", state, seconds)

    missing = []
    for storage, shift, kernel in todo:
        key = kc.make_key(storage, shift, kernel, cc, driver)
        if kc.read(kc.entry_path(directory, key), key) is not None:
            report(storage, shift, kernel, "cached", 0.0)
        else:
            missing.append((storage, shift, kernel))
    if jobs == 0:
        for storage, shift, kernel in missing:
            t0 = time.perf_counter()
            try:
                state = kc.fill(storage, shift, kernel, args.device)
            except Exception as e:  # reported, the others still compiled
                print(f"  {type(e).__name__}: {e}", file=sys.stderr)
                state = "failed"
            report(storage, shift, kernel, state, time.perf_counter() - t0)
    else:
        workers = kc.Workers(jobs)
        pending = []
        for storage, shift in kernel_sets(args.dtypes):
            names = [k for s, t, k in missing if (s, t) == (storage, shift)]
            pending += workers.submit(storage, shift, names, args.device)
        while pending:
            for job in [j for j in pending if j.done.wait(0.05)]:
                pending.remove(job)
                ok = job.returncode == 0 and job.state in ("cached", "compiled")
                report(job.storage, job.shift_storage, job.kernel,
                       job.state if ok else "failed", job.seconds)  # fmt: skip
                if not ok:
                    print(job.output.strip()[-4000:], file=sys.stderr)
    return progress.finish()


if __name__ == "__main__":
    sys.exit(main())
