"""The on-disk kernel cache on a GPU, across fresh processes: a warm process loads every
kernel without compiling (or importing numba.cuda) and computes what Numba's own
uncached path computes; a corrupted entry is recompiled, never loaded.

Each test starts processes that compile the float32 kernels (tens of seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from shift_testing import requires_cuda

from rubiks_shift import _kernel_cache

pytestmark = requires_cuda

CHILD = Path(__file__).with_name("_cache_child.py")


def _run(out: Path, cache: str, workers: str | None = None) -> dict:
    env = dict(os.environ, RUBIKS_SHIFT_CACHE_DIR=cache)
    env.pop("RUBIKS_SHIFT_COMPILE_WORKERS", None)
    if workers is not None:
        env["RUBIKS_SHIFT_COMPILE_WORKERS"] = workers
    done = subprocess.run(
        [sys.executable, str(CHILD), str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same(a: Path, b: Path) -> None:
    for x, y in zip(torch.load(a), torch.load(b), strict=True):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Results of Numba's own path, the cache off."""
    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    report = _run(out, "off")
    assert report["built"] == ["float32/float32"] and report["loaded"]
    return out


def test_warmup_then_a_process_loads_every_kernel_without_compiling(tmp_path, reference):
    cache = tmp_path / "kernels"
    env = dict(os.environ, RUBIKS_SHIFT_CACHE_DIR=str(cache))
    warm = subprocess.run(
        [sys.executable, "-m", "rubiks_shift.warmup", "--dtypes", "float32"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert warm.returncode == 0, warm.stdout + warm.stderr
    n = len(_kernel_cache.KERNELS)  # the fused form's affine gathers included
    assert f"{n} compiled, 0 already cached, 0 failed" in warm.stdout
    assert len(list(cache.glob("*.cubin"))) == n
    report = _run(tmp_path / "warm.pt", str(cache))
    assert report["built"] == [] and not report["numba_cuda"]
    assert sorted(report["loaded"]) == sorted(
        ["gather_frames", "gather", "gather_narrow", "grad_shift", "finalize"]
    )
    assert not any("compiled" in m for m in report["messages"]), report["messages"]
    _same(tmp_path / "warm.pt", reference)


def test_first_use_fills_the_cache_and_a_corrupted_entry_is_recompiled(tmp_path, reference):
    cache = tmp_path / "kernels"
    cold = _run(tmp_path / "cold.pt", str(cache))  # compile workers, in parallel
    assert cold["built"] == [], cold["messages"]  # the workers compiled, not this process
    _same(tmp_path / "cold.pt", reference)
    entries = sorted(cache.glob("gather_frames-*.cubin"))
    assert len(entries) == 1
    data = bytearray(entries[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the cubin
    entries[0].write_bytes(bytes(data))
    again = _run(tmp_path / "again.pt", str(cache), workers="0")  # recompiled in-process
    assert any("ignoring kernel cache entry" in m for m in again["messages"])
    assert any("compiled the CUDA gather_frames" in m for m in again["messages"])
    assert again["built"] == ["float32/float32"]
    _same(tmp_path / "again.pt", reference)
    assert entries[0].read_bytes() != bytes(data)  # rewritten
    warm = _run(tmp_path / "warm.pt", str(cache))
    assert warm["built"] == [] and not any("ignoring" in m for m in warm["messages"])
    _same(tmp_path / "warm.pt", reference)
