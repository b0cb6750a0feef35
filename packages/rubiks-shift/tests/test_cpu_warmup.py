"""``warmup --cpu``: the CPU kernels compiled ahead of time into Numba's cache, with the
signature every later call has."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from rubiks_shift import _cpu_warmup, warmup


def test_compute_dtypes():
    assert _cpu_warmup.compute_dtypes(["float32", "bfloat16", "float16"]) == ["float32"]
    assert _cpu_warmup.compute_dtypes(["float64", "bfloat16"]) == ["float64", "float32"]


def test_cpu_warmup_progress_counts_and_failures(monkeypatch, capsys):
    """In-process (--jobs 0) with a stand-in compile: a line per kernel and dtype, the
    failure's error on stderr, exit status 1 where one failed."""
    seen = []

    def compile_one(kernel, dtype):
        seen.append((kernel, dtype))
        if (kernel, dtype) == ("backward", "float64"):
            raise RuntimeError("no luck")
        return ("cached" if dtype == "float32" else "compiled"), 1.5

    monkeypatch.setattr(_cpu_warmup, "compile_one", compile_one)
    assert warmup.main(["--cpu", "--dtypes", "bfloat16", "float64", "--jobs", "0"]) == 1
    out = capsys.readouterr()
    kernels = ["forward", "backward", "affine_relu", "affine_relu_frames"]
    assert seen == [(k, d) for d in ("float32", "float64") for k in kernels]
    assert "8 CPU kernels (float32, float64)" in out.out
    assert "3 compiled, 4 already cached, 1 failed" in out.out
    assert out.out.count("compiled in 1.5 s") == 3 and "[8/8]" in out.out
    assert "RuntimeError: no luck" in out.err
    monkeypatch.setattr(_cpu_warmup, "compile_one", lambda kernel, dtype: ("cached", 0.1))
    assert warmup.main(["--cpu", "--jobs", "0"]) == 0
    assert "0 compiled, 4 already cached, 0 failed" in capsys.readouterr().out


_LATER_CALL = textwrap.dedent(
    """
    import torch
    from rubiks_shift import _cpu
    x = torch.randn(2, 3, 4, 5, 6)
    _cpu.forward(x, torch.rand(3, 4), (1, 2, 1), (0, 1, 0), False)
    stats = _cpu._kernels.forward.stats
    print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
    """
)


def test_a_warmed_kernel_loads_in_a_later_process(tmp_path):
    """A kernel compiled by a warmup job (a fresh Numba cache) is what a later process's
    real call loads: a cache hit, nothing compiled."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    warm = "from rubiks_shift import _cpu_warmup as w; print(*w.compile_one('forward', 'float32'))"
    done = subprocess.run(
        [sys.executable, "-c", warm], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "compiled"
    done = subprocess.run(
        [sys.executable, "-c", _LATER_CALL], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    hits, misses = map(int, done.stdout.split())
    assert hits == 1 and misses == 0
