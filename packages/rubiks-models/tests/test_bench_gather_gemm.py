"""benchmarks/bench_gather_gemm.py: its float64 arithmetic is the fused block's (the
composed form, through the ops' CPU kernels), and its Triton kernels match it (the
Triton interpreter on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gather_gemm.py"


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize(("channels", "side"), [(16, 6), (24, 5)])
def test_reference_is_the_composed_block(benchmark_script, dtype, tol, channels, side):
    bench = benchmark_script("bench_gather_gemm")
    d = bench.stage_inputs(channels, side, Namespace(batch=2, frames=4), dtype, "cpu")
    assert bool(d["q1"][0].ne(0).any()) and bool(d["q2"][1:].ne(0).any())  # moves happen
    for name, form, want in bench.forms(d, dtype):
        if name.endswith("_composed"):
            assert bench.error(form(d), want) < tol, name


def test_kernel_matches_float64_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("error") == 18
