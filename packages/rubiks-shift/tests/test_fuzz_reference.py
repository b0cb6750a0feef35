"""Fuzz the op against an independent float64 trilinear shift written here from SPEC §1.2-1.4.

The oracle builds, per channel, the dense matrix ``M`` of the forward map (each output
element's trilinear or quantized corner weights on the zero-padded input grid), so the
forward is ``M x`` and the input gradient is the adjoint ``M^T g``. It shares no code with
the package (``rubiks_shift.reference`` included). Cases are drawn from one seeded
generator: random tiny shapes, strides 1-3, padding 0-2, quantize on and off, and per
channel integer, exact half-integer or continuous shifts (some out of the clip).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rubiks_shift import RubiksShift3d, rubiks_shift3d

NUM_CASES = 1200


def _out_len(length: int, stride: int, pad: int) -> int:
    return (length + 2 * pad - 1) // stride + 1


def _axis_taps(
    length: int, stride: int, pad: int, s: float, quantize: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For one dimension: the (input index, weight) pairs of every output position, one
    pair of arrays per corner; out-of-range reads get weight 0 (X = 0 outside the clip)."""
    base = np.arange(_out_len(length, stride, pad)) * stride - pad
    if quantize:
        corners = [(base + math.floor(s + 0.5), np.ones(base.shape))]
    else:
        f = math.floor(s)
        r = s - f
        corners = [(base + f, np.full(base.shape, 1.0 - r)), (base + f + 1, np.full(base.shape, r))]
    taps = []
    for idx, w in corners:
        inside = (idx >= 0) & (idx < length)
        taps.append((np.where(inside, idx, 0), np.where(inside, w, 0.0)))
    return taps


def _channel_matrix(dims, strides, pads, shift, quantize) -> np.ndarray:
    """Dense (T'H'W', THW) matrix of one channel's forward map."""
    t, h, w = dims
    axes = [
        _axis_taps(n, s, p, float(v), quantize)
        for n, s, p, v in zip(dims, strides, pads, shift, strict=True)
    ]
    outs = [len(a[0][0]) for a in axes]
    m = np.zeros((math.prod(outs), t * h * w))
    rows = np.arange(m.shape[0]).reshape(outs)
    for it, wt in axes[0]:
        for ih, wh in axes[1]:
            for iw, ww in axes[2]:
                col = (it[:, None, None] * h + ih[None, :, None]) * w + iw[None, None, :]
                weight = wt[:, None, None] * wh[None, :, None] * ww[None, None, :]
                np.add.at(m, (rows.ravel(), col.ravel()), weight.ravel())
    return m


def oracle(x, shift, strides, pads, quantize, gy):
    """(y, grad_x) of the SPEC definition in float64 numpy."""
    n, t, c, h, w = x.shape
    ys, gxs = [], []
    for ch in range(c):
        m = _channel_matrix((t, h, w), strides, pads, shift[:, ch], quantize)
        xc = x[:, :, ch].reshape(n, -1)
        gc = gy[:, :, ch].reshape(n, -1)
        ys.append(xc @ m.T)
        gxs.append(gc @ m)
    out = [_out_len(*a) for a in zip((t, h, w), strides, pads, strict=True)]
    y = np.stack(ys, 1).reshape(n, c, *out).transpose(0, 2, 1, 3, 4)
    gx = np.stack(gxs, 1).reshape(n, c, t, h, w).transpose(0, 2, 1, 3, 4)
    return y, gx


def _shift_values(rng: np.random.Generator, c: int) -> np.ndarray:
    kind = rng.integers(0, 4, size=(3, c))
    integer = rng.integers(-3, 4, size=(3, c)).astype(np.float64)
    half = integer + 0.5
    cont = rng.uniform(-3.5, 3.5, size=(3, c))
    tiny = integer + rng.choice([-1e-9, 1e-9], size=(3, c))  # just off an integer
    return np.choose(kind, [integer, half, cont, tiny])


def _cases(count: int, seed: int = 2020):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        dims = tuple(int(v) for v in rng.integers(1, 6, size=3))
        strides = tuple(int(v) for v in rng.integers(1, 4, size=3))
        pads = tuple(int(v) for v in rng.integers(0, 3, size=3))
        yield (
            rng.standard_normal((n, dims[0], c, dims[1], dims[2])),
            _shift_values(rng, c),
            strides,
            pads,
            bool(rng.integers(0, 2)),
            rng,
        )


def test_op_matches_independent_trilinear_oracle():
    failures = []
    seen = {"quantize": set(), "stride>1": 0, "padding>0": 0, "half": 0}
    for i, (x, shift, strides, pads, quantize, rng) in enumerate(_cases(NUM_CASES)):
        xt = torch.from_numpy(x).requires_grad_()
        st = torch.from_numpy(shift)
        y = rubiks_shift3d(xt, st, strides, pads, quantize=quantize)
        gy = rng.standard_normal(tuple(y.shape))
        y.backward(torch.from_numpy(gy))
        y_ref, gx_ref = oracle(x, shift, strides, pads, quantize, gy)
        if y.shape != y_ref.shape:
            failures.append((i, "shape", tuple(y.shape), y_ref.shape))
            continue
        err_y = np.abs(y.detach().numpy() - y_ref).max(initial=0.0)
        err_gx = np.abs(xt.grad.numpy() - gx_ref).max(initial=0.0)
        if err_y > 1e-12 or err_gx > 1e-12:
            failures.append((i, err_y, err_gx, strides, pads, quantize, shift.tolist()))
        seen["quantize"].add(quantize)
        seen["stride>1"] += max(strides) > 1
        seen["padding>0"] += max(pads) > 0
        seen["half"] += bool(np.any(shift % 1 == 0.5))
    assert not failures, f"{len(failures)} of {NUM_CASES} cases differ, first: {failures[:3]}"
    # the draw covers what it claims to
    assert seen["quantize"] == {False, True}
    assert min(seen["stride>1"], seen["padding>0"], seen["half"]) > NUM_CASES // 4


def test_oracle_is_not_vacuous():
    # a hand-computed case: T = 1, W = 3, shift +0.5 along W reads the mean of neighbours
    x = np.array([1.0, 2.0, 4.0]).reshape(1, 1, 1, 1, 3)
    shift = np.array([[0.0], [0.0], [0.5]])
    y, _ = oracle(x, shift, (1, 1, 1), (0, 0, 0), False, np.zeros((1, 1, 1, 1, 3)))
    np.testing.assert_allclose(y.ravel(), [1.5, 3.0, 2.0])
    yq, _ = oracle(x, shift, (1, 1, 1), (0, 0, 0), True, np.zeros((1, 1, 1, 1, 3)))
    np.testing.assert_allclose(yq.ravel(), [2.0, 4.0, 0.0])  # 0.5 rounds up to 1


@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf])
def test_non_finite_normalize_t_factor_is_refused(factor):
    x = torch.randn(1, 2, 3, 4, 4)
    shift = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="normalize_t_factor must be finite"):
        rubiks_shift3d(x, shift, normalize_t_factor=factor)
    with pytest.raises(ValueError, match="normalize_t_factor must be finite"):
        RubiksShift3d(3, normalize_t_factor=factor)
