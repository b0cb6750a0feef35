"""Every bad input of docs/spec.md §1.7 is refused with an error naming the problem."""

from __future__ import annotations

import pytest
import torch
from shift_testing import requires_cuda

from rubiks_shift import (
    RubiksShift2d,
    RubiksShift3d,
    normalize_shift_grad,
    rubiks_shift2d,
    rubiks_shift3d,
)

X = torch.randn(1, 2, 3, 4, 4)
S = torch.zeros(3, 3)


@pytest.mark.parametrize(
    "x,shift,kwargs,error,match",
    [
        (torch.randn(2, 3, 4, 4), S, {}, ValueError, "rank 5"),
        (X, torch.zeros(3, 4), {}, ValueError, r"shape \(3, C\) = \(3, 3\)"),
        (X, torch.zeros(2, 3), {}, ValueError, r"shape \(3, C\)"),
        (X, torch.zeros(3), {}, ValueError, r"shape \(3, C\)"),
        (X, S, {"stride": 0}, ValueError, "stride must be >= 1"),
        (X, S, {"stride": (1, 0, 1)}, ValueError, "stride must be >= 1 .* H=0"),
        (X, S, {"padding": -1}, ValueError, "padding must be >= 0"),
        (X, S, {"stride": (1, 1)}, TypeError, "stride must be an int or a sequence of 3 ints"),
        (X, S, {"stride": 1.5}, TypeError, "stride must be an int"),
        (X, S, {"padding": True}, TypeError, "padding must be an int"),
        (X.int(), S, {}, TypeError, "unsupported dtype torch.int32 for x"),
        (X, S.long(), {}, TypeError, "unsupported dtype torch.int64 for shift"),
        (X.to(torch.complex64), S, {}, TypeError, "unsupported dtype"),
        (torch.randn(1, 0, 3, 4, 4), S, {}, ValueError, "empty dimension"),
        (torch.randn(0, 2, 3, 4, 4), S, {}, ValueError, r"empty dimension \(N\)"),
        (X, S, {"normalize_t_factor": "half"}, ValueError, "normalize_t_factor"),
        ("x", S, {}, TypeError, "must be tensors"),
    ],
)
def test_bad_inputs_3d(x, shift, kwargs, error, match):
    with pytest.raises(error, match=match):
        rubiks_shift3d(x, shift, **kwargs)


@pytest.mark.parametrize(
    "x,shift,kwargs,match",
    [
        (torch.randn(1, 2, 3, 4, 4), torch.zeros(2, 3), {}, "rank 4"),
        (torch.randn(1, 3, 4, 4), torch.zeros(3, 3), {}, r"shape \(2, C\)"),
        (torch.randn(1, 3, 4, 4), torch.zeros(2, 3), {"stride": (1, 1, 1)}, "sequence of 2 ints"),
        (torch.randn(1, 3, 4, 4), torch.zeros(2, 3), {"padding": (0, -2)}, "padding must be >= 0"),
    ],
)
def test_bad_inputs_2d(x, shift, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        rubiks_shift2d(x, shift, **kwargs)


@requires_cuda
def test_device_mismatch():
    with pytest.raises(ValueError, match="same device"):
        rubiks_shift3d(X.cuda(), S)


def test_device_mismatch_meta():
    with pytest.raises(ValueError, match="same device"):
        rubiks_shift3d(X.to("meta"), S)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: RubiksShift3d(0), "channels must be >= 1"),
        (lambda: RubiksShift3d(8, t_init="sideways"), "unknown temporal init mode"),
        (lambda: RubiksShift3d(8, init="tsm"), "unknown spatial init mode"),
        (lambda: RubiksShift2d(8, init="groupX"), "unknown spatial init mode"),
        (lambda: RubiksShift2d(8, stride=(1, 2, 2)), "sequence of 2 ints"),
    ],
)
def test_bad_module_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_checks_hold_after_a_valid_call_with_the_same_signature():
    """The per-signature check cache never lets a refused input through."""
    x = torch.randn(1, 2, 3, 4, 4)
    shift = torch.zeros(3, 3)
    rubiks_shift3d(x, shift, 1, 0)  # cached as valid
    with pytest.raises(TypeError, match="bool"):
        rubiks_shift3d(x, shift, True, 0)
    with pytest.raises(TypeError, match="float"):
        rubiks_shift3d(x, shift, 1.0, 0)
    with pytest.raises(ValueError, match="shape"):
        rubiks_shift3d(x, torch.zeros(3, 4), 1, 0)
    with pytest.raises(TypeError, match="tensors"):
        rubiks_shift3d(x.numpy(), shift, 1, 0)


def test_check_shift_names_the_non_finite_values():
    from rubiks_shift import check_shift

    shift = torch.zeros(3, 4)
    check_shift(shift)  # finite: nothing to say
    shift[1, 2], shift[0, 3] = float("nan"), float("-inf")
    with pytest.raises(
        ValueError, match=r"non-finite values at \(row, channel\) \[\[0, 3\], \[1, 2\]\]"
    ):
        check_shift(shift)
    with pytest.raises(TypeError, match="shift must be a tensor"):
        check_shift(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_finite_shifts_whose_sum_overflows_pass_the_check(dtype):
    """The check sums the shift first; a sum that overflows has its values looked at."""
    from rubiks_shift import check_shift

    big = torch.finfo(dtype).max
    shift = torch.full((3, 4), big, dtype=dtype)
    assert not torch.isfinite(shift.sum())
    check_shift(shift)
    rubiks_shift3d(torch.randn(1, 2, 4, 3, 3, dtype=dtype), shift)
    shift[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values at \(row, channel\) \[\[2, 1\]\]"):
        check_shift(shift)


@pytest.mark.parametrize(
    ("grad", "t_factor", "error", "match"),
    [
        (torch.ones(2, 4), 1.0, ValueError, r"\(3, C\) shift gradient .* got \(2, 4\)"),
        (torch.ones(3), 1.0, ValueError, r"got \(3,\)"),
        ([[1.0], [2.0], [3.0]], 1.0, ValueError, "got list"),
        (torch.ones(3, 4, dtype=torch.int64), 1.0, TypeError, "floating-point"),
        (torch.ones(3, 4), float("nan"), ValueError, "t_factor must be finite"),
    ],
)
def test_normalize_shift_grad_refuses_what_is_not_a_shift_gradient(grad, t_factor, error, match):
    with pytest.raises(error, match=match):
        normalize_shift_grad(grad, t_factor)


def _registered_calls(device: str):
    """(label, call) of every registered op with one wrong argument each."""
    x = torch.randn(1, 2, 4, 5, 5, device=device)
    gy, ones, zeros = torch.randn_like(x), torch.ones(4, device=device), torch.zeros(4)
    elsewhere = "cpu" if device == "meta" else "meta"
    shift, narrow = torch.zeros(3, 4, device=device), torch.zeros(3, 2, device=device)
    ops = torch.ops.rubiks_shift
    flags = (False, False, 1.0)
    return [
        ("shift3d shift", lambda: ops.shift3d(x, narrow, [1, 1, 1], [0, 0, 0], *flags)),
        ("shift3d stride", lambda: ops.shift3d(x, shift, [1, 0, 1], [0, 0, 0], *flags)),
        ("shift3d padding", lambda: ops.shift3d(x, shift, [1, 1], [0, 0], *flags)),
        ("shift3d rank", lambda: ops.shift3d(x[0], shift, [1, 1, 1], [0, 0, 0], *flags)),
        (
            "backward shift",
            lambda: ops.shift3d_backward(gy, x, narrow, [1, 1, 1], [0, 0, 0], *flags, True, True),
        ),
        (
            "affine shift",
            lambda: ops.affine_relu_shift3d(x, ones, ones, narrow, [1, 1, 1], [0, 0, 0], False),
        ),
        (
            "affine scale",
            lambda: ops.affine_relu_shift3d(x, ones[:2], ones, shift, [1, 1, 1], [0, 0, 0], False),
        ),
        ("prologue scale", lambda: ops.affine_relu(x, ones[:3], ones)),
        (
            "prologue frames",
            lambda: ops.affine_relu(
                x, ones, ones, torch.zeros(2, dtype=torch.int32, device=device)
            ),
        ),
        ("prologue device", lambda: ops.affine_relu(x, ones, zeros.to(elsewhere))),
    ]


@pytest.mark.parametrize(
    "device", ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])
)
def test_registered_ops_check_their_own_arguments(device):
    """torch.ops.rubiks_shift.* called directly (no public function checked first) refuse
    what their kernels would read wrongly or out of bounds; "meta" runs the fake kernels."""
    for label, call in _registered_calls(device):
        with pytest.raises(ValueError, match=r"rubiks_shift::\w+: "):
            call()
            pytest.fail(f"{label}: accepted")
