"""The float64 reference against the original code's fixtures and against calculus."""

from __future__ import annotations

import pytest
import torch
from shift_testing import load_op_cases, rel_err

from rubiks_shift import reference as R

CASES = list(load_op_cases())
REFERENCE_INTEGER_RULE = {"integer_shifts", "zero_shift"}


@pytest.mark.parametrize("case,t", CASES, ids=[c["name"] for c, _ in CASES])
def test_reference_reproduces_fixture(case, t):
    y = R.shift3d_forward(t["x"], t["shift"], case["stride"], case["padding"], case["quantize"])
    assert tuple(y.shape) == tuple(case["out_shape"])
    assert rel_err(y, t["y"]) < 1e-12
    gx, gs = R.shift3d_backward(
        t["grad_y"], t["x"], t["shift"], case["stride"], case["padding"], case["quantize"]
    )
    assert rel_err(gx, t["grad_x"]) < 1e-12
    if case["name"] not in REFERENCE_INTEGER_RULE:
        assert rel_err(gs, t["grad_shift"]) < 1e-12
        norm = R.normalize_shift_grad(gs, case["normalize_t_factor"])
        assert rel_err(norm, t["grad_shift_normalized"]) < 1e-12


def test_integer_fixture_differs_from_reference_rule_as_documented():
    """At integer shifts we use the central difference (docs/spec.md §1.4), not the original
    rule."""
    case, t = next((c, t) for c, t in CASES if c["name"] == "integer_shifts")
    _, gs = R.shift3d_backward(
        t["grad_y"], t["x"], t["shift"], case["stride"], case["padding"], False
    )
    assert rel_err(gs, t["grad_shift"]) > 1e-3


def _loss(x, shift, gy, stride, padding):
    return (R.shift3d_forward(x, shift, stride, padding) * gy).sum()


@pytest.mark.parametrize("stride,padding", [((1, 1, 1), (0, 0, 0)), ((2, 2, 1), (1, 0, 1))])
def test_shift_gradient_matches_finite_differences(stride, padding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 5, 6, generator=g, dtype=torch.float64)
    shift = torch.rand(3, 3, generator=g, dtype=torch.float64) * 4 - 2
    shift[0, 0], shift[1, 1], shift[2, 2] = 1.0, -1.0, 0.0  # exact integers: central rule
    gy = torch.randn_like(R.shift3d_forward(x, shift, stride, padding))
    _, gs = R.shift3d_backward(gy, x, shift, stride, padding)
    eps = 1e-6
    for d in range(3):
        for c in range(3):
            plus, minus = shift.clone(), shift.clone()
            plus[d, c] += eps
            minus[d, c] -= eps
            fd = (_loss(x, plus, gy, stride, padding) - _loss(x, minus, gy, stride, padding)) / (
                2 * eps
            )
            assert abs(float(fd) - float(gs[d, c])) < 1e-6 * max(1.0, abs(float(fd)))


def test_grad_x_is_adjoint_of_forward():
    g = torch.Generator().manual_seed(2)
    for quantize in (False, True):
        x = torch.randn(2, 3, 4, 7, 5, generator=g, dtype=torch.float64)
        shift = torch.rand(3, 4, generator=g, dtype=torch.float64) * 5 - 2.5
        shift[:, 0] = 0.5  # exact .5 ties under quantize
        y = R.shift3d_forward(x, shift, (1, 2, 2), (1, 1, 0), quantize)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        gx, _ = R.shift3d_backward(gy, x, shift, (1, 2, 2), (1, 1, 0), quantize)
        assert torch.allclose((y * gy).sum(), (x * gx).sum(), rtol=1e-12)


def test_quantize_rounds_half_up():
    x = torch.arange(10, dtype=torch.float64).view(1, 10, 1, 1, 1)
    for s, expected_offset in [(0.5, 1), (-0.5, 0), (-1.5, -1), (1.49, 1), (-0.51, -1)]:
        shift = torch.tensor([[s], [0.0], [0.0]], dtype=torch.float64)
        y = R.shift3d_forward(x, shift, quantize=True).flatten()
        t = 4
        assert y[t] == t + expected_offset


def test_normalization_rules():
    g = torch.tensor(
        [[3.0, 0.0, -2.0, 0.0], [4.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    out = R.normalize_shift_grad(g, 1.0)
    assert torch.allclose(out[:, 0], torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    assert torch.equal(out[:, 1], torch.zeros(3, dtype=torch.float64))
    out = R.normalize_shift_grad(g, 2.0)
    assert torch.allclose(out[:, 0], torch.tensor([6.0, 4.0, 0.0], dtype=torch.float64) / 52**0.5)
    out = R.normalize_shift_grad(g, -1.0)
    assert torch.equal(out[0], torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64))
    assert torch.equal(out[1:], torch.zeros(2, 4, dtype=torch.float64))  # g_T = 0 -> all zero
