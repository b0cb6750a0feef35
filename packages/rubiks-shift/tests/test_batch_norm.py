"""batch_norm_relu: relu(F.batch_norm(...)); in training on CUDA this package's kernels,
equal to torch's in float64 to rounding, deterministic, capturable in a CUDA graph."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shift_testing import requires_cuda

from rubiks_shift import batch_norm_relu
from rubiks_shift.batch_norm import uses_kernels


def _case(seed, shape, device, dtype, acc=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(device, dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    params = [
        torch.rand(c, generator=g, dtype=torch.float64) + 0.5,  # weight
        torch.randn(c, generator=g, dtype=torch.float64),  # bias
        torch.randn(c, generator=g, dtype=torch.float64) * 0.1,  # running mean
        torch.rand(c, generator=g, dtype=torch.float64) + 0.5,  # running var
    ]
    return x, dy, [p.to(device, acc) for p in params]


def _step(x, dy, params, fn, momentum=0.1):
    """One training forward + backward through ``fn``: (y, running mean, running var,
    grad_x, grad_weight, grad_bias)."""
    w, b, rm, rv = (p.clone() for p in params)
    x = x.clone().requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = fn(x, rm, rv, w, b, True, momentum, 1e-5)
    y.backward(dy)
    return y.detach(), rm, rv, x.grad, w.grad, b.grad


def _torch(x, rm, rv, w, b, training, momentum, eps):
    return torch.relu(F.batch_norm(x, rm, rv, w, b, training, momentum, eps))


@pytest.fixture(params=["spans", "one block"])
def channel_form(request):
    """Every channel's values cut into spans of several blocks (three launches per
    direction), or one block per channel (one launch), whatever the default picks for
    the shape."""
    from rubiks_shift import _cuda

    values = 2**40 if request.param == "one block" else 0
    with _cuda.tuned(replace(_cuda._tuning, batch_norm_channel_values=values)):
        yield request.param


def test_cpu_and_evaluation_are_torch_itself():
    x, dy, params = _case(0, (4, 3, 5, 5), "cpu", torch.float32)
    w, b, rm, rv = params
    assert not uses_kernels(x, rm, rv, w, b, True, 0.1)  # the CPU
    for training in (True, False):
        got = _step(x, dy, params, batch_norm_relu) if training else None
        want = _step(x, dy, params, _torch) if training else None
        if training:
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        else:
            y = batch_norm_relu(x, rm.clone(), rv.clone(), w, b, False, 0.1, 1e-5)
            assert torch.equal(y, _torch(x, rm, rv, w, b, False, 0.1, 1e-5))


@requires_cuda
def test_which_calls_use_the_kernels():
    x, _, (w, b, rm, rv) = _case(0, (4, 3, 5, 5), "cuda", torch.bfloat16)
    assert uses_kernels(x, rm, rv, w, b, True, 0.1)
    assert not uses_kernels(x, rm, rv, w, b, False, 0.1)  # evaluation
    assert not uses_kernels(x, rm, rv, w, b, True, None)  # cumulative average
    assert not uses_kernels(x, None, None, w, b, True, 0.1)  # no running statistics
    assert not uses_kernels(x, rm, rv, w.double(), b, True, 0.1)  # weight not float32
    assert uses_kernels(x.flatten(2), rm, rv, w, b, True, 0.1)  # (B, C, L)
    assert not uses_kernels(x.flatten(1), rm, rv, w, b, True, 0.1)  # not (B, C, ...)


@requires_cuda
@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.float64, 1e-11), (torch.float32, 2e-5), (torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
)
@pytest.mark.parametrize(
    "shape", [(8, 72, 56, 56), (64, 288, 14, 14), (16, 5, 7, 7), (3, 4, 1, 1), (1, 288, 12544)]
)
def test_cuda_matches_torch_in_float64(dtype, tol, shape, channel_form):
    """The forward, the running statistics and the three gradients against torch's batch
    norm + ReLU in float64 on the same values, within the dtype's rounding."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, dy, params = _case(1, shape, "cuda", dtype, acc)
    got = _step(x, dy, params, batch_norm_relu)
    want = _step(x.double(), dy.double(), [p.double() for p in params], _torch)
    names = ("y", "running_mean", "running_var", "grad_x", "grad_weight", "grad_bias")
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == (dtype if name in ("y", "grad_x") else acc), name
        scale = b.abs().max().item() or 1.0
        err = (a.double() - b).abs().max().item() / scale
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@requires_cuda
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 40), st.integers(1, 40)),
)
def test_cuda_random_shapes_float64(seed, shape, channel_form):
    if shape[0] * shape[2] * shape[3] < 2:
        return
    x, dy, params = _case(seed, shape, "cuda", torch.float64, torch.float64)
    got = _step(x, dy, params, batch_norm_relu)
    want = _step(x, dy, params, _torch)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@requires_cuda
def test_cuda_is_deterministic_and_graph_capturable(channel_form):
    x, dy, params = _case(2, (16, 144, 28, 28), "cuda", torch.bfloat16)
    first = _step(x, dy, params, batch_norm_relu)
    second = _step(x, dy, params, batch_norm_relu)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    w, b, rm, rv = (p.clone() for p in params)
    w.requires_grad_()
    b.requires_grad_()
    xg = x.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm the plan and kernels outside the capture
        batch_norm_relu(xg, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5).backward(dy)
    torch.cuda.current_stream().wait_stream(stream)
    xg.grad = w.grad = b.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = batch_norm_relu(xg, rm, rv, w, b, True, 0.1, 1e-5)
        y.backward(dy)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, first[0])
    assert torch.equal(xg.grad, first[3]) and torch.equal(w.grad, first[4])
    assert torch.equal(rm, first[1]) and torch.equal(rv, first[2])


def _kernel_calls(x, dy, params):
    """y, the running statistics, stats, grad_x, the parameter gradients and y recomputed,
    from ``rubiks_shift.kernels`` called directly (x and dy as given, not copied)."""
    from rubiks_shift import kernels

    w, b, rm, rv = (p.clone() for p in params)
    y, stats = kernels.batch_norm_relu_forward(x, w, b, rm, rv, 0.1, 1e-5)
    grads = kernels.batch_norm_relu_backward(dy, x, w, stats, 0.1, 1e-5)
    return y, rm, rv, stats, *grads, kernels.batch_norm_relu_apply(x, stats)


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(16, 144, 28, 28), (8, 72, 56, 56), (64, 288, 14, 14)])
def test_cuda_pairs_and_single_values(dtype, tol, shape, channel_form):
    """bfloat16 and float32 move as words of two values where the plane is even and x and
    grad_y lie on a word's boundary (4 or 8 bytes), else a value at a time: both within
    rounding of torch's float64 batch norm; x off a boundary runs the single-value kernels
    (bit for bit), grad_y off one their backward; the elementwise pass gives the same
    bits either way from the same statistics."""
    from rubiks_shift import _cuda, kernels

    x, dy, params = _case(3, shape, "cuda", dtype)
    want = _step(x.double(), dy.double(), [p.double() for p in params], _torch)
    paired = _kernel_calls(x, dy, params)
    plan = _cuda._BN_PLANS[(x.shape, x.dtype, 1e-5, 0.1, True)][1]
    steps = (plan.channel_forward, plan.partial, plan.normalize, plan.grad_input)
    assert {step.scalars.paired for step in steps if step is not None} == {1}
    with _cuda.tuned(replace(_cuda._tuning, batch_norm_pairs=False)):
        single = _kernel_calls(x, dy, params)
        stats = paired[3]
        assert torch.equal(kernels.batch_norm_relu_apply(x, stats), paired[0])
        single_backward = kernels.batch_norm_relu_backward(dy, x, params[0], stats, 0.1, 1e-5)
    order = (0, 1, 2, 4, 5, 6)  # y, running statistics, the three gradients
    for got in (paired, single):
        for name, k, b in zip(("y", "rm", "rv", "gx", "gw", "gb"), order, want, strict=True):
            err = (got[k].double() - b).abs().max().item() / (b.abs().max().item() or 1.0)
            assert err <= tol, f"{name}: relative error {err:.2e}"
    off = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)[1:].view(shape)
    assert off.data_ptr() % (2 * x.element_size()) == x.element_size()
    got = _kernel_calls(off.copy_(x), dy, params)
    assert all(torch.equal(a, b) for a, b in zip(got, single, strict=True))
    got = _kernel_calls(x, off.copy_(dy), params)
    assert all(torch.equal(a, b) for a, b in zip(got[:4], paired[:4], strict=True))  # forward
    assert all(torch.equal(a, b) for a, b in zip(got[4:7], single_backward, strict=True))


@requires_cuda
def test_cuda_one_value_per_channel_is_refused():
    x, _, (w, b, rm, rv) = _case(0, (1, 3, 1, 1), "cuda", torch.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_relu(x, rm, rv, w, b, True, 0.1, 1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(16, 144, 28, 28), (6, 5, 7, 3)])
def test_cuda_channel_major_frames(dtype, tol, shape, channel_form):
    """Frames of a channel-major clip ((C, B, H, W) storage seen as (B, C, H, W)): read in
    place, y and grad_x in that layout, the values torch's in float64 (grad_y given in
    that layout and contiguous)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x, dy, params = _case(2, shape, "cuda", dtype, acc)
    want = _step(x.double(), dy.double(), [p.double() for p in params], _torch)
    major = x.transpose(0, 1).contiguous().transpose(0, 1)
    for grad in (dy.transpose(0, 1).contiguous().transpose(0, 1), dy):
        got = _step(major, grad, params, batch_norm_relu)
        for name, a, b in zip(("y", "rm", "rv", "gx", "gw", "gb"), got, want, strict=True):
            err = (a.double() - b).abs().max().item() / (b.abs().max().item() or 1.0)
            assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
        for t in (got[0], got[3]):  # y and grad_x
            assert not t.is_contiguous() and t.transpose(0, 1).is_contiguous()


def test_kernel_entry_point_checks_before_writing_running_statistics():
    from rubiks_shift import kernels

    x = torch.randn(4, 3, 5, 5)
    weight, bias, mean, var = torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)
    bad = [
        ((x, weight, bias, torch.zeros(2), var, 0.1, 1e-5), "must have shape"),
        ((x, weight[:2], bias, mean, var, 0.1, 1e-5), "must have shape"),
        ((torch.randn(1, 3, 1, 1), weight, bias, mean, var, 0.1, 1e-5), "more than one value"),
        ((x, weight, bias, mean, var, None, 1e-5), "momentum must be a number in"),
    ]
    for args, message in bad:
        before = [t.clone() for t in args[3:5]]
        with pytest.raises(ValueError, match=message):
            kernels.batch_norm_relu_forward(*args)
        assert all(torch.equal(a, b) for a, b in zip(before, args[3:5], strict=True))
