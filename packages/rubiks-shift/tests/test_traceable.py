"""The plain-torch forms torch.compile traces for the inference ops: the ops' values, the
ops' layouts, and compiled graphs that call no registered op."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import DEVICES, channel_major

from rubiks_shift import (
    COMPILE_AS_TORCH,
    affine_relu,
    affine_relu_shift3d,
    is_channel_major,
    stem_conv,
)
from rubiks_shift._traceable import affine_relu_shift3d_torch, affine_relu_torch
from rubiks_shift.reference import shift3d_forward

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _case(seed, shape, device, dtype, spread=2.5):
    g = torch.Generator().manual_seed(seed)
    c = shape[2]
    x = torch.randn(shape, generator=g).to(device, dtype)
    scale = (torch.rand(c, generator=g) * 2 - 0.5).to(device)
    bias = (torch.randn(c, generator=g) * 0.5).to(device)
    shift = ((torch.rand(3, c, generator=g) * 2 - 1) * spread).to(device)
    shift[:, 0] = torch.tensor([1.0, -2.0, 0.0])  # integer shifts: one tap each
    return x, scale, bias, shift


def _prologue64(x, scale, bias):
    view = (1, 1, -1, 1, 1)
    return torch.relu(x.double() * scale.double().view(view) + bias.double().view(view))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(*(st.integers(1, n) for n in (2, 5, 4, 8, 8))),
    stride=st.tuples(*(st.integers(1, 3) for _ in range(3))),
    padding=st.tuples(*(st.integers(0, 2) for _ in range(3))),
    quantize=st.booleans(),
    major=st.booleans(),
)
def test_shift_form_matches_float64_reference(
    device, seed, shape, stride, padding, quantize, major
):
    x, scale, bias, shift = _case(seed, shape, device, torch.float64)
    x = channel_major(x) if major else x
    got = affine_relu_shift3d_torch(x, scale, bias, shift, stride, padding, quantize)
    expected = shift3d_forward(_prologue64(x, scale, bias), shift, stride, padding, quantize)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("major", [False, True])
def test_shift_form_equals_the_op_and_keeps_its_layout(device, dtype, quantize, major):
    x, scale, bias, shift = _case(3, (2, 5, 6, 7, 9), device, dtype)
    x = channel_major(x) if major else x
    for stride, padding in [((1, 1, 1), (0, 0, 0)), ((2, 1, 2), (1, 0, 2))]:
        with torch.no_grad():
            op = affine_relu_shift3d(x, scale, bias, shift, stride, padding, quantize=quantize)
        got = affine_relu_shift3d_torch(x, scale, bias, shift, stride, padding, quantize)
        assert got.dtype == dtype and got.shape == op.shape
        assert is_channel_major(got) == is_channel_major(op) == major
        assert got.is_contiguous() == op.is_contiguous()
        # one rounding of the same float32 sum; the summation order may differ
        torch.testing.assert_close(got, op, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_affine_relu_form_equals_the_op(device, dtype):
    x, scale, bias, _ = _case(5, (2, 3, 4, 5, 6), device, dtype)
    frames = torch.tensor([1, 0, -2, 5], device=device, dtype=torch.int32)
    for clip in (x, channel_major(x)):
        for fs in (None, frames):
            with torch.no_grad():
                op = affine_relu(clip, scale, bias, fs)
            got = affine_relu_torch(clip, scale, bias, fs)
            assert got.stride() == op.stride() and got.dtype == dtype
            torch.testing.assert_close(got, op, rtol=TOL[dtype], atol=TOL[dtype])


def _traced_targets(fn, *args):
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    return out, targets


_REGISTERED = {  # setting -> the registered op it replaces
    "affine_relu": "rubiks_shift.affine_relu",
    "affine_relu_shift3d_quantized": "rubiks_shift.affine_relu_shift3d",
    "affine_relu_shift3d_interpolated": "rubiks_shift.affine_relu_shift3d",
    "stem": "rubiks_shift.stem",
}


@pytest.mark.parametrize("traced", [None, *_REGISTERED])
def test_compiled_code_traces_the_setting(traced, monkeypatch):
    """Each COMPILE_AS_TORCH entry decides alone whether compiled code calls its
    registered op or traces the torch form; the values are the ops' either way."""
    assert set(COMPILE_AS_TORCH) == set(_REGISTERED)
    for op in COMPILE_AS_TORCH:
        monkeypatch.setitem(COMPILE_AS_TORCH, op, op == traced)
    x, scale, bias, shift = _case(9, (1, 4, 3, 6, 6), "cpu", torch.float32)
    weight = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(9))

    def block(x):
        a = affine_relu(x, scale, bias)
        b = affine_relu_shift3d(a, scale, bias, shift, 1, 1)
        c = affine_relu_shift3d(b, scale, bias, shift, 1, 1, quantize=True)
        return c, stem_conv(x[0], weight)

    with torch.no_grad():
        expected = block(x)
    out, targets = _traced_targets(block, x)
    calls = {op: targets.count(op) for op in set(_REGISTERED.values())}
    expected_calls = {"rubiks_shift.affine_relu": 1, "rubiks_shift.stem": 1}
    expected_calls["rubiks_shift.affine_relu_shift3d"] = 2
    if traced is not None:
        expected_calls[_REGISTERED[traced]] -= 1
    assert calls == expected_calls
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
