"""The public op on every available device against the fixtures and the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import DEVICES, channel_major, load_op_cases, rel_err

from rubiks_shift import is_channel_major, rubiks_shift2d, rubiks_shift3d
from rubiks_shift import reference as R

CASES = list(load_op_cases())
REFERENCE_INTEGER_RULE = {"integer_shifts", "zero_shift"}


def run(x, shift, gy, device, **kw):
    x = x.detach().to(device).clone().requires_grad_()
    shift = shift.detach().to(device).clone().requires_grad_()
    y = rubiks_shift3d(x, shift, **kw)
    y.backward(gy.to(device=device, dtype=y.dtype))
    return y.detach().cpu(), x.grad.cpu(), shift.grad.cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,t", CASES, ids=[c["name"] for c, _ in CASES])
def test_fixture(device, case, t):
    kw = dict(
        stride=case["stride"],
        padding=case["padding"],
        quantize=case["quantize"],
        normalize_t_factor=case["normalize_t_factor"],
    )
    y, gx, gs = run(t["x"], t["shift"], t["grad_y"], device, **kw)
    assert rel_err(y, t["y"]) < 1e-10
    assert rel_err(gx, t["grad_x"]) < 1e-10
    if case["name"] in REFERENCE_INTEGER_RULE:
        _, raw = R.shift3d_backward(
            t["grad_y"], t["x"], t["shift"], case["stride"], case["padding"]
        )
        expected = R.normalize_shift_grad(raw, case["normalize_t_factor"])
    else:
        expected = t["grad_shift_normalized"]
    assert rel_err(gs, expected) < 1e-10
    # raw (unnormalised) gradient too
    _, _, raw_gs = run(
        t["x"],
        t["shift"],
        t["grad_y"],
        device,
        normalize_grad=False,
        **{k: v for k, v in kw.items() if k != "normalize_t_factor"},
    )
    if case["name"] not in REFERENCE_INTEGER_RULE:
        assert rel_err(raw_gs, t["grad_shift"]) < 1e-10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "stride,padding,quantize",
    [
        (1, 0, False),
        ((1, 2, 2), (0, 1, 1), False),
        ((2, 1, 3), (1, 2, 0), False),
        (1, 0, True),
    ],
)
def test_gradcheck(device, stride, padding, quantize):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 2, 5, 4, generator=g, dtype=torch.float64, device="cpu").to(device)
    # non-integer shifts, away from the quantisation ties
    shift = (
        torch.rand(3, 2, generator=g, dtype=torch.float64) * 0.6
        + 0.2
        + torch.tensor([[-2.0, 1.0], [0.0, -1.0], [1.0, 2.0]], dtype=torch.float64)
    ).to(device)
    x.requires_grad_()
    shift.requires_grad_(not quantize)  # the quantised forward is piecewise constant in shift
    fn = lambda a, b: rubiks_shift3d(a, b, stride, padding, quantize=quantize, normalize_grad=False)
    assert torch.autograd.gradcheck(fn, (x, shift), eps=1e-6, atol=1e-7)


shapes = st.tuples(
    st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)
)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    shape=shapes,
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    scale=st.sampled_from([0.5, 2.0, 8.0, 1e6]),
    quantize=st.booleans(),
    integers=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference_random(device, shape, stride, padding, scale, quantize, integers, seed):
    check_against_reference(device, shape, stride, padding, scale, quantize, integers, seed)


def check_against_reference(device, shape, stride, padding, scale, quantize, integers, seed):
    """Forward, grad_x and the raw shift gradient in float64 on ``device`` against the
    float64 reference, for random x, grad_y and shifts (rounded to integers if asked)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    shift = (torch.rand(3, shape[2], generator=g, dtype=torch.float64) * 2 - 1) * scale
    if integers:
        shift = shift.round()
    y = rubiks_shift3d(x.to(device), shift.to(device), stride, padding, quantize=quantize)
    y_ref = R.shift3d_forward(x, shift, stride, padding, quantize)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    gx, gs = torch.ops.rubiks_shift.shift3d_backward(
        gy.to(device),
        x.to(device),
        shift.to(device),
        list(stride),
        list(padding),
        quantize,
        False,
        1.0,
        True,
        True,
    )
    gx_ref, gs_ref = R.shift3d_backward(gy, x, shift, stride, padding, quantize)
    torch.testing.assert_close(gx.cpu(), gx_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gs.cpu(), gs_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_is_deterministic(device):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 4, 8, 12, 12, generator=g).to(device)
    shift = (torch.rand(3, 8, generator=g) * 4 - 2).to(device)
    gy = torch.randn(4, 4, 8, 12, 12, generator=g).to(device)
    first = run(x, shift, gy, device, normalize_grad=False)
    for _ in range(3):
        again = run(x, shift, gy, device, normalize_grad=False)
        for a, b in zip(first, again, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 1e-2)]
)
def test_low_precision_matches_float64(device, dtype, tol):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 9, 9, generator=g, dtype=torch.float64)
    shift = torch.rand(3, 6, generator=g, dtype=torch.float64) * 4 - 2
    gy = torch.randn(2, 4, 6, 9, 9, generator=g, dtype=torch.float64)
    ref = run(x, shift, gy, "cpu", normalize_grad=False)
    low = run(x.to(dtype), shift.float(), gy.to(dtype), device, normalize_grad=False)
    assert low[0].dtype == dtype and low[1].dtype == dtype and low[2].dtype == torch.float32
    for a, b in zip(low, ref, strict=True):
        assert rel_err(a, b) < tol


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    g = torch.Generator().manual_seed(6)
    base = torch.randn(2, 5, 4, 6, 7, generator=g, dtype=torch.float64).to(device)
    x = base.transpose(3, 4).contiguous().transpose(3, 4)  # same values, non-contiguous
    assert not x.is_contiguous()
    shift = (torch.rand(3, 4, generator=g, dtype=torch.float64) * 3).to(device)
    torch.testing.assert_close(
        rubiks_shift3d(x, shift), rubiks_shift3d(base, shift), rtol=0, atol=0
    )


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_shifts_are_memory_safe(device):
    """The kernels themselves (what runs on a GPU, and on CPU inside torch.compile) accept any
    value: +-inf shifts everything out (zeros), NaN poisons only its channel."""
    x = torch.randn(2, 3, 4, 5, 5, dtype=torch.float64, device=device)
    shift = torch.tensor(
        [
            [float("inf"), 1e30, float("nan"), 0.3],
            [0.0, -1e30, 0.0, float("-inf")],
            [0.0, 0.0, 0.0, 0.2],
        ],
        dtype=torch.float64,
        device=device,
    )
    y = torch.ops.rubiks_shift.shift3d(x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0)
    y = y.cpu()
    assert torch.equal(y[:, :, [0, 1, 3]], torch.zeros_like(y[:, :, [0, 1, 3]]))
    assert torch.isnan(y[:, :, 2]).all()
    gx, gs = torch.ops.rubiks_shift.shift3d_backward(
        torch.ones_like(x), x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0, True, True
    )
    gx, gs = gx.cpu(), gs.cpu()
    assert torch.equal(gx[:, :, [0, 1, 3]], torch.zeros_like(gx[:, :, [0, 1, 3]]))
    assert torch.isnan(gx[:, :, 2]).all() and torch.isnan(gs[:, 2]).all()
    assert torch.isfinite(gs[:, [0, 1, 3]]).all()


def test_cpu_refuses_non_finite_shift():
    x = torch.randn(1, 2, 2, 3, 3)
    for bad in (float("nan"), float("inf")):
        shift = torch.zeros(3, 2)
        shift[1, 1] = bad
        with pytest.raises(ValueError, match="non-finite"):
            rubiks_shift3d(x, shift)


@pytest.mark.parametrize("device", DEVICES)
def test_normalization_options(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 5, 8, 6, generator=g, dtype=torch.float64)
    shift = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 - 1
    gy = torch.randn(2, 4, 5, 8, 6, generator=g, dtype=torch.float64)
    _, raw = R.shift3d_backward(gy, x, shift)
    for factor, expected_factor in [(1.0, 1.0), (0.25, 0.25), ("auto", 4 / 8), (-1.0, -1.0)]:
        _, _, gs = run(x, shift, gy, device, normalize_t_factor=factor)
        assert rel_err(gs, R.normalize_shift_grad(raw, expected_factor)) < 1e-12
    _, _, gs = run(x, shift, gy, device, normalize_grad=False)
    assert rel_err(gs, raw) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_2d_is_3d_with_one_frame(device):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 4, 7, 9, generator=g, dtype=torch.float64)
    shift = torch.rand(2, 4, generator=g, dtype=torch.float64) * 4 - 2
    gy_shape = (3, 4, 5, 5)
    gy = torch.randn(gy_shape, generator=g, dtype=torch.float64)
    xs = x.clone().to(device).requires_grad_()
    ss = shift.clone().to(device).requires_grad_()
    y = rubiks_shift2d(xs, ss, stride=2, padding=(1, 0))
    assert y.shape == gy_shape
    y.backward(gy.to(device))
    shift3 = torch.cat([torch.zeros(1, 4, dtype=torch.float64), shift])
    y_ref = R.shift3d_forward(x.unsqueeze(1), shift3, (1, 2, 2), (0, 1, 0)).squeeze(1)
    gx_ref, gs_ref = R.shift3d_backward(
        gy.unsqueeze(1), x.unsqueeze(1), shift3, (1, 2, 2), (0, 1, 0)
    )
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(xs.grad, gx_ref.squeeze(1)) < 1e-12
    hw = gs_ref[1:]
    assert rel_err(ss.grad, hw / hw.norm(dim=0, keepdim=True)) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride", [(1, 1, 1), (1, 2, 2)])
@pytest.mark.parametrize("registered", [False, True])
def test_channel_major_clips(device, dtype, stride, registered):
    """The op on a channel-major clip (eager, and through the registered op): y and
    grad_x channel-major, every value that of the contiguous clip, bit for bit."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 6, 7, 8, generator=g).to(device, dtype)
    shift = (torch.rand(3, 6, generator=g) * 4 - 2).to(device)
    y_shape = (2, 3, 6, 7 // stride[1] + (7 % stride[1] > 0), 8 // stride[2])
    gy = torch.randn(y_shape, generator=g).to(device, dtype)
    results = []
    for clip, grad in ((x, gy), (channel_major(x), channel_major(gy))):
        xg = clip.clone().requires_grad_()
        s = shift.clone().requires_grad_()
        if registered:
            y = torch.ops.rubiks_shift.shift3d(xg, s, list(stride), [0, 0, 0], False, True, 1.0)
        else:
            y = rubiks_shift3d(xg, s, stride)
        y.backward(grad)
        results.append((y.detach(), xg.grad, s.grad))
    (y, gx, gs), (y_cm, gx_cm, gs_cm) = results
    assert is_channel_major(y_cm) and is_channel_major(gx_cm)
    assert torch.equal(y_cm, y) and torch.equal(gx_cm, gx) and torch.equal(gs_cm, gs)
