"""CUDA kernels without a GPU: the simulator on tiny shapes, and PTX for every dtype."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

numba_cuda = pytest.importorskip("numba.cuda", reason="numba-cuda (the 'cuda' extra) not installed")


def test_kernels_in_cuda_simulator(tmp_path):
    """The simulator's two parts (``_cuda_sim_cases.py``) in two processes at once: the
    simulator runs every thread in Python, and CI has two cores. Their output goes to
    files, so neither waits for the other to read a pipe."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    script = Path(__file__).with_name("_cuda_sim_cases.py")
    parts = ("checks", "cases")
    logs = [(tmp_path / f"{part}.out", tmp_path / f"{part}.err") for part in parts]
    procs = []
    try:
        for part, (out, err) in zip(parts, logs, strict=True):
            with out.open("w") as stdout, err.open("w") as stderr:
                cmd = [sys.executable, str(script), part]
                procs.append(subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr))
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    stdout = "".join(out for out, _ in outputs)
    print(stdout)
    for part, code, (out, err) in zip(parts, codes, outputs, strict=True):
        assert code == 0, f"{part}: {out}{err}"
    assert stdout.count("ok  ") == 28
    assert "ok-bounds" in stdout  # the simulator's pointers check every access
    assert "ok-strides" in stdout  # a same-shape output gets canonical strides
    assert stdout.count("ok-rows") == 9  # the row walk where the frame walk is the default
    assert stdout.count("ok-frames") == 9  # the frame walk in short bands and chunks
    assert stdout.count("ok-affine ") == 14  # the forward with the input prologue
    assert stdout.count("ok-affine-cm") == 14  # ... on channel-major planes
    # the pixel walk (small planes, the fused form's shift) against the frame walk
    assert stdout.count("ok-pixels") == 6
    assert stdout.count("ok-train-cm") == 14  # forward and backward, channel-major
    # the prologue alone, both layouts, without and with a frame shift; bfloat16 clips
    # with even planes on 4-byte boundaries in pairs (two cases), the others one by one
    assert stdout.count("ok-prologue") == 34
    # quantized shifts at stride 1 as one elementwise pass: forward, affine form and
    # grad_x bit for bit against the gathers, both layouts; a NaN shift's channel NaN
    assert stdout.count("ok-integer ") == 8
    assert stdout.count("ok-integer-nan") == 4
    assert stdout.count("paired=True") == 8
    # training batch norm + ReLU against torch's in float64, deterministic (each case
    # with spans of several blocks per channel and with one block per channel; a
    # bfloat16 case also with one block of the wide width)
    assert stdout.count("ok-batch-norm") == 11
    # bfloat16 and float32 in pairs where the plane is even (every form), against single
    # values
    assert stdout.count("bn pairs=True") == 7
    # the stem against torch's convolution in float64, 1, 3 and 4 pixels per thread
    assert stdout.count("ok-stem") == 18


@pytest.mark.parametrize("storage", ["float16", "bfloat16", "float32", "float64"])
def test_compile_ptx_every_dtype(storage):
    from rubiks_shift import _cuda_kernels

    shift_storages = ["float32", "float64"] if storage == "float32" else ["float32"]
    for shift_storage in shift_storages:
        kernels = _cuda_kernels.Kernels(storage, shift_storage)
        names = ("gather", "gather_narrow", "gather_frames", "grad_shift", "finalize")
        if shift_storage == "float32":  # the prologue and batch norm: no shift read
            names += ("affine_relu", "bn_partial", "bn_grad_input")
            names += ("bn_stats", "bn_grad_coefficients", "bn_normalize")
            names += ("bn_channel_forward", "bn_channel_backward", "stem")
        # the fused inference form's prologue kernels: float32 shifts only (it stores
        # its shifts in float32); the one-column variant in one dtype (CI time)
        names += ("shift_integer",)
        affine = ("gather_affine", "gather_frames_affine", "gather_pixels_affine")
        affine += ("shift_integer_affine",)
        affine = affine if shift_storage == "float32" else ()
        if affine and storage == "float32":
            affine += ("gather_narrow_affine",)
        for name in names + affine:
            sig = getattr(kernels, name + "_sig")
            ptx = _cuda_kernels.kernel_ptx(getattr(kernels, name), sig, (9, 0))
            assert ".entry" in ptx
            if storage != "float64" and shift_storage == "float32":
                # float32 accumulation must not silently promote to float64 (gather and grad_shift
                # split task indices with float64 reciprocals: parameter loads,
                # conversions and multiplies only, no float64 sums)
                f64_ops = set(re.findall(r"\b([a-z]+)(?:\.[a-z]+)*\.f64\b", ptx))
                allowed = {"ld", "cvt", "mul"} if name != "finalize" else set()
                if name in ("bn_stats", "bn_grad_coefficients"):
                    continue  # one thread per channel sums its parts in float64 on purpose
                if name in ("bn_channel_forward", "bn_channel_backward"):
                    # the channel's values (mean, 1 / sqrt(var + eps), coefficients) from
                    # its sums in float64 on purpose, once per thread, not per value (the
                    # variance's cut at 0 a comparison and select, which keep a NaN)
                    allowed |= {"add", "sub", "div", "fma", "rcp", "sqrt", "neg", "mov"}
                    allowed |= {"setp", "selp"}
                assert f64_ops <= allowed, f"{name}/{storage} uses float64 arithmetic: {f64_ops}"


def test_kernel_parameters_are_checked_against_their_scalar_block():
    """A kernel whose parameter list disagrees with its ``_cuda_scalars`` block (another
    order, a missing field) is refused when it is built, not miscalled at launch."""
    from rubiks_shift._cuda_device import check_parameters
    from rubiks_shift._cuda_scalars import FinalizeScalars

    def finalize(partial, shift, out, C, parts, normalize, t_factor):
        pass

    def swapped(partial, shift, out, parts, C, normalize, t_factor):
        pass

    pointers = ("partial", "shift", "out")
    check_parameters(finalize, pointers, FinalizeScalars)
    with pytest.raises(TypeError, match="FinalizeScalars says"):
        check_parameters(swapped, pointers, FinalizeScalars)


def test_batch_norm_plan_pairs_exactly_the_storages_whose_kernels_walk_words():
    """The plan (numba-free) and the kernels each name the storages that move words of
    two values; a storage the plan pairs but the kernels do not would read words as
    values."""
    from rubiks_shift._cuda_batch_norm import _PAIRS
    from rubiks_shift._cuda_plan import BATCH_NORM_PAIRED

    assert set(_PAIRS) == set(BATCH_NORM_PAIRED)
