"""rubiks_shift.kernels: the ops' forward and backward without autograd equal the
differentiable ops' values and gradients (float64 references, seeded cases)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import requires_cuda

from rubiks_shift import kernels, rubiks_shift3d


def _bn_case(seed: int, shape: tuple, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).to(device, dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    w = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(device, acc)
    b = torch.randn(c, generator=g, dtype=torch.float64).to(device, acc)
    return x, dy, w, b


def _frames_channel_major(x: torch.Tensor) -> torch.Tensor:
    """x's values, stored (C, B, ...) and seen as (B, C, ...)."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)


def _bn_torch(x, dy, w, b, momentum=0.1, eps=1e-5):
    """relu(batch_norm) by torch's autograd: (y, running stats, grad_x, grad_w, grad_b)."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    rm = torch.zeros_like(w).detach()
    rv = torch.ones_like(w).detach()
    y = torch.relu(F.batch_norm(x, rm, rv, w, b, True, momentum, eps))
    y.backward(dy)
    return y.detach(), rm, rv, x.grad, w.grad, b.grad


def _bn_kernels(x, dy, w, b, momentum=0.1, eps=1e-5):
    rm = torch.zeros_like(w)
    rv = torch.ones_like(w)
    y, stats = kernels.batch_norm_relu_forward(x, w, b, rm, rv, momentum, eps)
    gx, gw, gb = kernels.batch_norm_relu_backward(dy, x, w, stats, momentum, eps)
    return y, rm, rv, gx, gw, gb


def _check_bn(x, dy, w, b, tol):
    got = _bn_kernels(x, dy, w, b)
    want = _bn_torch(x, dy, w, b)
    for name, g, r in zip(
        ("y", "mean", "var", "grad_x", "grad_w", "grad_b"), got, want, strict=True
    ):
        torch.testing.assert_close(g, r.to(g.dtype), rtol=tol, atol=tol, msg=name)
    return got


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(4, 3, 5, 5), (2, 6, 7), (1, 5, 9, 1), (3, 2, 1, 4)]),
)
def test_cpu_batch_norm_relu_matches_torch(seed, shape):
    x, dy, w, b = _bn_case(seed, shape, "cpu", torch.float64)
    _check_bn(x, dy, w, b, 1e-10)


def test_cpu_batch_norm_relu_keeps_channel_major_frames():
    x, dy, w, b = _bn_case(1, (4, 3, 5, 6), "cpu", torch.float64)
    y, *_ = _bn_kernels(x, dy, w, b)
    ym, _, _, gxm, *_ = _check_bn(_frames_channel_major(x), _frames_channel_major(dy), w, b, 1e-10)
    assert ym.transpose(0, 1).is_contiguous() and gxm.transpose(0, 1).is_contiguous()
    torch.testing.assert_close(ym, y, rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("major", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_cuda_batch_norm_relu_matches_torch(major, dtype, tol):
    x, dy, w, b = _bn_case(2, (8, 16, 14, 14), "cuda", dtype)
    if major:
        x, dy = _frames_channel_major(x), _frames_channel_major(dy)
    y, _, _, gx, _, _ = _check_bn(x, dy, w, b, tol)
    if major:
        assert y.transpose(0, 1).is_contiguous() and gx.transpose(0, 1).is_contiguous()


def _apply_case(x, w, b):
    """(y of the forward, y recomputed by batch_norm_relu_apply from x and the stats)."""
    rm, rv = torch.zeros_like(w), torch.ones_like(w)
    y, stats = kernels.batch_norm_relu_forward(x, w, b, rm, rv, 0.1, 1e-5)
    before = (rm.clone(), rv.clone())
    again = kernels.batch_norm_relu_apply(x, stats)
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])  # nothing updated
    return y, again


@pytest.mark.parametrize("major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpu_batch_norm_relu_apply_recomputes_y_bit_for_bit(major, dtype):
    x, _, w, b = _bn_case(4, (4, 3, 5, 6), "cpu", dtype)
    if major:
        x = _frames_channel_major(x)
    y, again = _apply_case(x, w, b)
    assert again.dtype == x.dtype and again.stride() == y.stride()
    assert torch.equal(again, y)


@requires_cuda
@pytest.mark.parametrize("major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(8, 16, 14, 14), (64, 72, 56, 56), (2, 5, 3, 3)])
def test_cuda_batch_norm_relu_apply_recomputes_y_bit_for_bit(major, dtype, shape):
    """Both forms of the forward (a block per channel for few values, spans of several
    blocks for many) give the y that the one elementwise pass recomputes."""
    x, _, w, b = _bn_case(5, shape, "cuda", dtype)
    if major:
        x = _frames_channel_major(x)
    y, again = _apply_case(x, w, b)
    assert again.stride() == y.stride()
    assert torch.equal(again, y)


def _check_nan_like_torch(device: str, shape: tuple) -> None:
    """A NaN in one channel's input: y, running statistics and gradients NaN where torch's
    relu(batch_norm) gives NaN and equal (to float64 rounding) elsewhere."""
    x, dy, w, b = _bn_case(7, shape, device, torch.float64)
    x[0, 1].view(-1)[0] = float("nan")
    got = _bn_kernels(x, dy, w, b)
    want = _bn_torch(x, dy, w, b)
    assert bool(got[0][:, 1].isnan().all()) and not bool(got[0][:, 0].isnan().any())
    for name, g, r in zip(
        ("y", "mean", "var", "grad_x", "grad_w", "grad_b"), got, want, strict=True
    ):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, equal_nan=True, msg=name)
    y, stats = kernels.batch_norm_relu_forward(
        x, w, b, torch.zeros_like(w), torch.ones_like(w), 0.1, 1e-5
    )
    torch.testing.assert_close(
        kernels.batch_norm_relu_apply(x, stats), y, rtol=0, atol=0, equal_nan=True
    )


def test_cpu_batch_norm_relu_keeps_nan_as_torch():
    _check_nan_like_torch("cpu", (4, 3, 5, 5))


@requires_cuda
@pytest.mark.parametrize("one_block", [False, True], ids=["spans", "one-block"])
def test_cuda_batch_norm_relu_keeps_nan_as_torch(one_block):
    """Both kernel forms (spans of several blocks; one block per channel)."""
    from dataclasses import replace

    from rubiks_shift import _cuda
    from rubiks_shift._cuda_tuning import TUNING

    values = 2**40 if one_block else 0
    with _cuda.tuned(replace(TUNING, batch_norm_channel_values=values)):
        _check_nan_like_torch("cuda", (8, 16, 14, 14))


def test_batch_norm_relu_apply_refuses_stats_of_another_shape_or_dtype():
    x, _, w, b = _bn_case(6, (4, 3, 5, 5), "cpu", torch.float32)
    _, stats = kernels.batch_norm_relu_forward(
        x, w, b, torch.zeros_like(w), torch.ones_like(w), 0.1, 1e-5
    )
    with pytest.raises(ValueError, match=r"stats must be the forward's \(4, 3\)"):
        kernels.batch_norm_relu_apply(x, stats[:, :2])
    with pytest.raises(ValueError, match=r"torch\.float32"):
        kernels.batch_norm_relu_apply(x, stats.double())


def _shift_case(seed: int, device: str, dtype: torch.dtype, channel_major: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 6, 5, generator=g, dtype=torch.float64)
    dy = torch.randn(2, 3, 4, 3, 3, generator=g, dtype=torch.float64)
    shift = torch.rand(3, 4, generator=g, dtype=torch.float64) * 4 - 2
    x, dy = x.to(device, dtype), dy.to(device, dtype)
    if channel_major:
        x = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    return x, dy, shift.to(device, torch.float32 if dtype != torch.float64 else dtype)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=requires_cuda)], ids=["cpu", "cuda"]
)
@pytest.mark.parametrize("channel_major", [False, True])
@pytest.mark.parametrize("normalize_grad,t_factor", [(False, 1.0), (True, "auto"), (True, 0.5)])
def test_shift3d_matches_the_op(device, channel_major, normalize_grad, t_factor):
    """shift3d_forward / shift3d_backward give the op's value and gradients bit for bit,
    in the input's layout."""
    x, dy, shift = _shift_case(4, device, torch.float64, channel_major)
    opts = dict(stride=(1, 2, 2), padding=(0, 0, 0))
    y = kernels.shift3d_forward(x, shift, quantize=False, **opts)
    gx, gs = kernels.shift3d_backward(
        dy, x, shift, **opts, normalize_grad=normalize_grad, normalize_t_factor=t_factor
    )
    xr = x.detach().clone().requires_grad_()
    sr = shift.detach().clone().requires_grad_()
    yr = rubiks_shift3d(xr, sr, **opts, normalize_grad=normalize_grad, normalize_t_factor=t_factor)
    yr.backward(dy)
    assert torch.equal(y, yr.detach()) and y.stride() == yr.stride()
    assert torch.equal(gx, xr.grad) and gx.stride() == x.stride()
    assert torch.equal(gs, sr.grad)
    assert kernels.shift3d_backward(dy, x, shift, **opts, need_x=False, need_shift=False) == (
        None,
        None,
    )


def test_shift3d_checks_its_arguments():
    x, dy, shift = _shift_case(5, "cpu", torch.float64, False)
    with pytest.raises(ValueError):
        kernels.shift3d_forward(x, shift[:, :3])
    with pytest.raises(ValueError, match="normalize_t_factor"):
        kernels.shift3d_backward(dy, x, shift, (1, 2, 2), 0, normalize_t_factor="half")


def test_plain_eager_is_false_under_a_dispatch_mode():
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert kernels.plain_eager()
    with _Mode():
        assert not kernels.plain_eager()


def test_backward_entry_points_refuse_a_grad_y_of_another_shape():
    """The kernels index grad_y by x's shape: another shape must be an error, not an
    out-of-bounds read."""
    x, shift = torch.randn(2, 4, 8, 16, 16), torch.randn(3, 8)
    for bad in (torch.ones(1, 1, 1, 1, 1), torch.ones(2, 4, 8, 8, 8)):
        with pytest.raises(ValueError, match="grad_y must have the forward's output shape"):
            kernels.shift3d_backward(bad, x, shift)
        with pytest.raises(ValueError, match="grad_y must have the forward's output shape"):
            torch.ops.rubiks_shift.shift3d_backward(
                bad, x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0, True, True
            )
    with pytest.raises(ValueError, match="grad_y must be a floating tensor"):
        kernels.shift3d_backward(torch.ones(2, 4, 8, 16, 16, dtype=torch.int64), x, shift)
    grad_x, grad_shift = kernels.shift3d_backward(torch.ones(2, 4, 8, 8, 8), x, shift, (1, 2, 2))
    assert grad_x.shape == x.shape and grad_shift.shape == shift.shape
