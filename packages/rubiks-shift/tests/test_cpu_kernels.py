"""The Numba CPU kernels' code paths against the float64 reference (docs/spec.md §1).

The kernels pick different loops by stride (1, 2, other), by whether a component is
fractional (two taps, fused interpolation/derivative sweeps) or integer/quantized (one
tap, central-difference stencil), by plane width (rows processed back to back or one by
one) and by where the taps fall (interior, edges, outside). These tests reach each of
them through ``rubiks_shift._cpu`` directly and compare with ``rubiks_shift.reference``.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubiks_shift import _cpu, _cpu_kernels, normalize_shift_grad
from rubiks_shift import reference as R
from rubiks_shift._checks import SHIFT_LIMIT

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="needs numba")


def _shift(g, channels, kind, scale):
    s = (torch.rand(3, channels, generator=g, dtype=torch.float64) * 2 - 1) * scale
    if kind == "integer":
        s = s.round()
    elif kind == "half":
        s = (s * 2).round() / 2  # exact .5 ties: quantize rounds half up
    elif kind == "mixed":  # per dimension: fractional, integer, fractional
        s[1] = s[1].round()
    elif kind == "huge":
        s = s.sign() * (SHIFT_LIMIT - torch.rand(3, channels, generator=g, dtype=torch.float64))
    return s


def _compare(x, shift, stride, padding, quantize, gy=None, dtype=torch.float64, tol=1e-12):
    y = _cpu.forward(x.to(dtype), shift, stride, padding, quantize)
    y_ref = R.shift3d_forward(x, shift, stride, padding, quantize)
    assert y.shape == y_ref.shape and y.dtype == dtype
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    if gy is None:
        gy = torch.randn(y.shape, dtype=torch.float64)
    gx, gs = _cpu.backward(
        gy.to(dtype), x.to(dtype), shift, stride, padding, quantize, False, 1.0, True, True
    )
    gx_ref, gs_ref = R.shift3d_backward(gy, x, shift, stride, padding, quantize)
    torch.testing.assert_close(gx.double(), gx_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gs.double(), gs_ref, rtol=100 * tol, atol=100 * tol)
    # each output alone, as the op requests them
    gx_only, _ = _cpu.backward(
        gy.to(dtype), x.to(dtype), shift, stride, padding, quantize, False, 1.0, True, False
    )
    _, gs_only = _cpu.backward(
        gy.to(dtype), x.to(dtype), shift, stride, padding, quantize, False, 1.0, False, True
    )
    assert torch.equal(gx_only, gx) and torch.equal(gs_only, gs)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    shape=st.tuples(
        st.integers(1, 2),
        st.integers(1, 5),
        st.integers(1, 3),
        st.sampled_from([1, 2, 3, 7, 11]),
        st.sampled_from([1, 2, 3, 7, 16, 37]),
    ),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    kind=st.sampled_from(["fractional", "integer", "half", "mixed", "huge"]),
    scale=st.sampled_from([0.75, 2.5, 9.0]),
    quantize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(shape, stride, padding, kind, scale, quantize, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    _compare(x, _shift(g, shape[2], kind, scale), stride, padding, quantize)


@pytest.mark.parametrize(
    "shape,stride,padding",
    [
        ((2, 4, 3, 56, 56), (1, 1, 1), (0, 0, 0)),  # network stage, rows back to back
        ((1, 4, 5, 7, 7), (1, 1, 1), (0, 0, 0)),  # 7-wide planes
        ((2, 3, 3, 28, 28), (1, 2, 2), (0, 0, 0)),  # strided stage, even widths
        ((1, 3, 3, 15, 13), (1, 2, 2), (0, 1, 1)),  # odd widths with padding
        ((1, 6, 2, 9, 10), (2, 3, 3), (1, 0, 2)),  # generic strides everywhere
    ],
)
@pytest.mark.parametrize("kind", ["fractional", "integer", "half", "mixed"])
@pytest.mark.parametrize("quantize", [False, True])
def test_network_like_shapes(shape, stride, padding, kind, quantize):
    g = torch.Generator().manual_seed(21)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    _compare(x, _shift(g, shape[2], kind, 2.5), stride, padding, quantize)


@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2), (3, 3, 3)])
@pytest.mark.parametrize("quantize", [False, True])
def test_float32_matches_float64(stride, quantize):
    """float32 data: single-precision passes, float64 shift-gradient sums."""
    g = torch.Generator().manual_seed(22)
    x = torch.randn(2, 4, 6, 20, 18, generator=g, dtype=torch.float64)
    shift = _shift(g, 6, "fractional", 2.5)
    shift[:, 0] = shift[:, 0].round()  # one channel on the integer stencil
    y = _cpu.forward(x, shift, stride, (0, 0, 0), quantize)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    ref = (y, *_cpu.backward(gy, x, shift, stride, (0, 0, 0), quantize, False, 1.0, True, True))
    y32 = _cpu.forward(x.float(), shift, stride, (0, 0, 0), quantize)
    low = (
        y32,
        *_cpu.backward(
            gy.float(), x.float(), shift, stride, (0, 0, 0), quantize, False, 1.0, True, True
        ),
    )
    assert low[0].dtype == low[1].dtype == torch.float32
    for a, b in zip(low, ref, strict=True):
        assert float((a.double() - b).norm() / b.norm()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2), (2, 2, 3)])
@pytest.mark.parametrize("quantize", [False, True])
def test_gather_reads_only_what_it_uses(dtype, stride, quantize):
    """Integer or quantized shifts are a pure gather: inputs it does not use (the
    zero-weight corners, the columns a stride skips) are never read, so non-finite
    values there do not leak into the output."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(2, 5, 3, 8, 12, generator=g, dtype=torch.float64)
    shift = torch.tensor([[0.0, 1.0, -2.0], [-1.0, 2.0, 0.0], [1.0, 0.0, -1.0]])
    shift = shift.double() + (0.3 if quantize else 0.0)
    y_ref = R.shift3d_forward(x, shift, stride, (0, 0, 0), quantize)
    used, _ = R.shift3d_backward(torch.ones_like(y_ref), x, shift, stride, (0, 0, 0), quantize)
    unused = used == 0
    assert unused.any()
    poisoned = x.clone()
    poisoned[unused] = float("inf")
    poisoned[unused & (torch.arange(x.numel()).view(x.shape) % 3 == 0)] = float("nan")
    y = _cpu.forward(poisoned.to(dtype), shift, stride, (0, 0, 0), quantize)
    assert torch.equal(y.double(), y_ref.to(dtype).double())


@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2), (2, 3, 1)])
def test_huge_shifts_read_nothing(stride):
    """Shifts at +-SHIFT_LIMIT (what the op clamps to) move every tap outside."""
    x = torch.randn(2, 3, 4, 9, 8, dtype=torch.float64)
    shift = torch.tensor(
        [
            [SHIFT_LIMIT, -SHIFT_LIMIT, 0.5, -SHIFT_LIMIT + 0.5],
            [0.0, 0.25, SHIFT_LIMIT - 0.5, 1.0],
            [0.0, 0.0, -SHIFT_LIMIT, SHIFT_LIMIT],
        ],
        dtype=torch.float64,
    )
    y = _cpu.forward(x, shift, stride, (1, 1, 1), False)
    assert torch.equal(y, torch.zeros_like(y))
    gx, gs = _cpu.backward(
        torch.ones_like(y), x, shift, stride, (1, 1, 1), False, False, 1.0, True, True
    )
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gs, torch.zeros_like(gs))


def test_bits_do_not_depend_on_threads():
    """Each (n, c) column is computed whole by one thread, its shift-gradient partial
    summed in a fixed order: the same bits for any thread count and every run."""
    g = torch.Generator().manual_seed(24)
    x = torch.randn(3, 4, 10, 12, 12, generator=g)
    shift = torch.rand(3, 10, generator=g) * 4 - 2
    gy = torch.randn(3, 4, 10, 12, 12, generator=g)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, threads, threads):
            torch.set_num_threads(n)
            y = _cpu.forward(x, shift, (1, 1, 1), (0, 0, 0), False)
            gx, gs = _cpu.backward(gy, x, shift, (1, 1, 1), (0, 0, 0), False, True, 1.0, True, True)
            results.append((y, gx, gs))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_set_threads_follows_torch_count_per_thread():
    """The count set is numba's for the calling thread, set again only when the asked
    count changes; another thread starts from numba's own count."""
    pool = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    try:
        assert _cpu_kernels.set_threads(1) == 1 and numba.get_num_threads() == 1
        assert _cpu_kernels.set_threads(pool + 5) == pool and numba.get_num_threads() == pool
        assert _cpu_kernels.set_threads(0) == 1 and numba.get_num_threads() == 1
        seen = []
        worker = threading.Thread(
            target=lambda: seen.append((_cpu_kernels.set_threads(pool), numba.get_num_threads()))
        )
        worker.start()
        worker.join()
        assert seen == [(pool, pool)] and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
        _cpu_kernels.set_threads(before)


@pytest.mark.parametrize(
    "shift_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("quantize", [False, True])
def test_tables_clamp_and_mark_nan_channels(shift_dtype, dtype, quantize):
    """``_cpu._tables`` reads the shift as float64, NaN as 0 and clamped to the limit,
    and marks the NaN channels: the tables of the shift prepared that way in torch."""
    g = torch.Generator().manual_seed(5)
    shift = (torch.rand(3, 7, generator=g, dtype=torch.float64) * 8 - 4).to(shift_dtype)
    shift[0, 1], shift[2, 2], shift[1, 3] = float("nan"), float("inf"), -float("inf")
    shift[1, 4] = torch.finfo(shift_dtype).max
    ints, weights, nan, has_nan = _cpu._tables(shift.t().contiguous().t(), quantize, dtype)
    expected = shift.to(torch.float64).nan_to_num(0.0).clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
    ints_ref, weights_ref = np.empty_like(ints), np.empty_like(weights)
    _cpu._kernels.tables(expected.numpy(), quantize, ints_ref, weights_ref)
    assert (ints == ints_ref).all() and (weights == weights_ref).all()
    assert nan.tolist() == [False, True] + [False] * 5 and has_nan
    _, _, nan, has_nan = _cpu._tables(shift.nan_to_num(0.0), quantize, dtype)
    assert not nan.any() and not has_nan


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, 5),
    channels=st.integers(1, 6),
    t_factor=st.sampled_from([1.0, 0.5, 0.0, 2.0, -1.0]),
    seed=st.integers(0, 2**16),
)
def test_finish_shift_grad_matches_the_torch_normalisation(batch, channels, t_factor, seed):
    """The CPU backward's last step (sum over the batch in float64, then the per-channel
    normalisation) against ``normalize_shift_grad`` of the summed partials; zero
    gradients stay zero, NaN channels are NaN in all three rows."""
    g = torch.Generator().manual_seed(seed)
    partial = torch.randn(batch, 3, channels, generator=g, dtype=torch.float64)
    partial[:, :, 0] = 0.0  # a channel with no gradient
    nan = torch.zeros(channels, dtype=torch.bool)
    nan[channels - 1] = channels > 1
    raw = partial.sum(dim=0)
    for normalize in (False, True):
        out = np.empty((3, channels))
        _cpu._kernels.finish_shift_grad(partial.numpy(), nan.numpy(), normalize, t_factor, out)
        got = torch.from_numpy(out)
        expected = normalize_shift_grad(raw, t_factor) if normalize else raw.clone()
        expected[:, nan] = float("nan")
        torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-15, equal_nan=True)
        assert torch.equal(got[:, 0], torch.zeros(3, dtype=torch.float64))


def test_column_helpers_take_no_reference_counts():
    """The helpers each kernel calls per column are compiled without NRT reference counts
    where numba has the option, and the kernels that allocate keep them."""
    from numba.core.cpu import CPUTargetOptions

    helpers = [
        _cpu_kernels._forward_column, _cpu_kernels._affine_relu_column,
        _cpu_kernels._grad_x_column, _cpu_kernels._grad_shift_column,
        _cpu_kernels._wgather, _cpu_kernels._rgather, _cpu_kernels._dot3,
    ]  # fmt: skip
    expected = False if hasattr(CPUTargetOptions, "_nrt") else None
    for helper in helpers:
        assert helper.targetoptions.get("_nrt") is expected, helper.py_func.__name__
    for kernel in (_cpu_kernels.forward, _cpu_kernels.backward, _cpu_kernels.prepare):
        assert "_nrt" not in kernel.targetoptions
