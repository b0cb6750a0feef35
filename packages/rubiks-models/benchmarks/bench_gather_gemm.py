"""A fused block's shift and batch norm + ReLU read inside its 1x1 convolution's product.

    python packages/rubiks-models/benchmarks/bench_gather_gemm.py [--dtypes bfloat16 float32]
        [--stages 72x56 144x28 288x14 576x7] [--batch 8 --frames 8] [--json OUT.json]
    TRITON_INTERPRET=1 python packages/rubiks-models/benchmarks/bench_gather_gemm.py --check

A channel-major fused block runs four passes: relu(bn1(x)) (with a hardened AQ block's
whole-frame temporal shift), conv1 as one product, the shift with relu(. + b2) as its
prologue, conv2 as one product into the residual. The passes before the products can be
read by the products themselves. ``gather_gemm_kernel`` computes ``y = w @ B (+ r)`` with
``B[k, p] = relu(x[k, p + q_k] * scale[k] + bias[k])``, 0 where ``p + q_k`` leaves the
clip: the hardened AQ block's quantized shifts (whole frames before conv1, whole rows
and columns before conv2) and a rubiks3d block's bn1 (no move). ``interp_gemm_kernel``
reads B through a rubiks3d block's trilinear shift (eight taps per value, blended as the
shift kernels blend them). A block then moves its tensor through memory 2.5 times
instead of 4.5.

It times, per stage (channels x side), on one GPU in a CUDA graph (``bench_block_parts``'
``time_us``), identity blocks as the fused model runs them (``affine_relu``, conv1's
product, ``affine_relu_shift3d``, conv2's product into the residual; the products as
the fused model computes them: ``product``) against two kernel calls: a hardened AQ
block, a rubiks3d block, and a rubiks3d block's bn1 pass + conv1 alone. Each form is
checked against float64 arithmetic with the same rounding points first (max error
relative to the largest reference value). ``--check`` runs the kernels and the
gathered forms against float64 on tiny float32 clips (any device; the Triton interpreter
on the CPU) and exits 1 above 1e-5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_block_parts import time_us

from rubiks_models.channel_major_block import clip_points, points_clip
from rubiks_models.io import atomic_write
from rubiks_shift import affine_relu, affine_relu_shift3d
from rubiks_shift.reference import shift3d_forward


@triton.jit
def _accumulate(acc, a, u, IEEE: tl.constexpr):
    """acc + a @ u, the operand u rounded to a's dtype (float32: TF32 unless ``IEEE``)."""
    if IEEE:
        return tl.dot(a, u.to(a.dtype), acc, input_precision="ieee")
    return tl.dot(a, u.to(a.dtype), acc)


@triton.jit
def _finish(acc, r_ptr, y_ptr, rm, rn, M, P, RESIDUAL: tl.constexpr):
    """Store the (BM, BN) tile acc (+ the residual's) at rows rm, points rn of y."""
    at = rm[:, None].to(tl.int64) * P + rn[None, :]
    mask = (rm < M)[:, None] & (rn < P)[None, :]
    if RESIDUAL:
        acc += tl.load(r_ptr + at, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + at, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gather_gemm_kernel(
    w_ptr, x_ptr, scale_ptr, bias_ptr, q_ptr, r_ptr, y_ptr,
    M, K, P, T, H, W,
    FRAMES: tl.constexpr, PIXELS: tl.constexpr, RESIDUAL: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """y[m, p] = sum_k w[m, k] * relu(x[k, p + q_k] * scale[k] + bias[k]) (+ r[m, p]);
    q_k = qt * H * W + qh * W + qw from the (3, K) int32 ``q`` (qt read where ``FRAMES``,
    qh and qw where ``PIXELS``, else 0), the term 0 where frame, row or column leaves the
    clip; p runs over (clip, frame, row, column), T frames of H x W."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    m_ok = rm < M
    n_ok = rn < P
    col = rn % W
    row = (rn // W) % H
    frame = (rn // (H * W)) % T
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        a = tl.load(w_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)  # fmt: skip
        s = tl.load(scale_ptr + rk, mask=k_ok, other=0.0)
        b = tl.load(bias_ptr + rk, mask=k_ok, other=0.0)
        ok = k_ok[:, None] & n_ok[None, :]
        move = tl.zeros((BK,), dtype=tl.int32)
        # in range as unsigned: a negative index wraps above the bound
        if FRAMES:
            qt = tl.load(q_ptr + rk, mask=k_ok, other=0)
            t = (frame[None, :] + qt[:, None]).to(tl.uint32)
            ok = ok & (t < T.to(tl.uint32))
            move += qt * (H * W)
        if PIXELS:
            qh = tl.load(q_ptr + K + rk, mask=k_ok, other=0)
            qw = tl.load(q_ptr + 2 * K + rk, mask=k_ok, other=0)
            h = (row[None, :] + qh[:, None]).to(tl.uint32)
            w = (col[None, :] + qw[:, None]).to(tl.uint32)
            ok = ok & (h < H.to(tl.uint32)) & (w < W.to(tl.uint32))
            move += qh * W + qw
        at = rk[:, None].to(tl.int64) * P + (rn[None, :] + move[:, None])
        v = tl.load(x_ptr + at, mask=ok, other=0.0)
        u = v.to(tl.float32) * s[:, None] + b[:, None]
        u = tl.where((u <= 0.0) | (~ok), 0.0, u)  # relu keeping NaN; 0 outside the clip
        acc = _accumulate(acc, a, u, IEEE)
    _finish(acc, r_ptr, y_ptr, rm, rn, M, P, RESIDUAL)


SHIFT_LIMIT = float(2**24)  # the shift kernels clamp each component to this first


# tiles without register spills for the bfloat16 kernel that moves rows and columns
# (ptxas 13.0 for sm_90a: 0-4 bytes), from large to small
def configs(tiles) -> list:
    """Triton configs of (BM, BN, BK, warps, stages) tiles."""
    return [
        triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in tiles
    ]


CONFIGS = configs(
    (
        (128, 128, 32, 8, 3),
        (128, 128, 32, 8, 2),
        (64, 128, 32, 8, 3),
        (128, 64, 32, 8, 3),
        (128, 64, 32, 4, 3),
        (64, 64, 64, 4, 2),
        (64, 64, 32, 4, 4),
        (32, 64, 32, 4, 3),
    )
)
tuned_kernel = triton.autotune(CONFIGS, key=["M", "K", "P", "FRAMES", "PIXELS", "RESIDUAL"])(
    gather_gemm_kernel
)


def launch(kernel, tuned, args, flags: dict, size: tuple[int, int], config) -> None:
    """``kernel`` over an (M, P) result of ``size``: with the (BM, BN, BK) tile ``config``,
    else ``tuned`` (its autotuned form)."""
    m, p = size
    if config is None:
        tuned[lambda meta: (triton.cdiv(p, meta["BN"]), triton.cdiv(m, meta["BM"]))](*args, **flags)
        return
    bm, bn, bk = config
    kernel[(triton.cdiv(p, bn), triton.cdiv(m, bm))](*args, **flags, BM=bm, BN=bn, BK=bk)


def gather_gemm(
    w, x, scale, bias, q, clip, residual=None, out=None, config=None, moves=None, exact=False
):
    """``w @ B (+ residual)`` as above: w (M, K), x (K, P) contiguous, scale and bias (K,)
    float32, q (3, K) int32 or None (no move), ``clip`` = (T, H, W) of p's frames; out
    (M, P) in x's dtype. ``config``: (BM, BN, BK) without autotuning. ``moves``: whether
    q moves (frames, pixels); read from q where not given (which waits for the device).
    float32 products use TF32, as the fused model's cuDNN convolutions may, unless
    ``exact``."""
    m, k = w.shape
    p = x.shape[1]
    y = torch.empty(m, p, dtype=x.dtype, device=x.device) if out is None else out
    if moves is None:
        moves = (False, False) if q is None else (bool(q[0].any()), bool(q[1:].any()))
    frames, pixels = moves
    flags = dict(FRAMES=frames, PIXELS=pixels, RESIDUAL=residual is not None,
                 IEEE=exact and x.dtype == torch.float32)  # fmt: skip
    args = (w, x, scale, bias, q if q is not None else scale,
            residual if residual is not None else y, y, m, k, p, *clip)  # fmt: skip
    launch(gather_gemm_kernel, tuned_kernel, args, flags, (m, p), config)
    return y


@triton.jit
def _blend(first, second, w0, w1, use0, use1):
    """w0 * first + w1 * second as the shift kernels round it, a tap of zero weight
    selected away (never multiplied: it may be inf)."""
    x = tl.where(use0, w0 * first, 0.0)
    return tl.where(use1, tl.fma(w1, second, x), x)


@triton.jit
def _tap(h_ptr, rows, k_ok, n_ok, t, hh, ww, T, H, W, s, b, P):
    """relu(h * s + b) at (frame t, row hh, column ww) of each (channel row, point) pair,
    0 outside the clip."""
    ok = k_ok[:, None] & n_ok[None, :]
    ok = ok & (t.to(tl.uint32) < T.to(tl.uint32)) & (hh.to(tl.uint32) < H.to(tl.uint32))
    ok = ok & (ww.to(tl.uint32) < W.to(tl.uint32))
    v = tl.load(h_ptr + rows + ((t * H + hh) * W + ww), mask=ok, other=0.0).to(tl.float32)
    u = tl.fma(v, s, b)
    return tl.where((u <= 0.0) | (~ok), 0.0, u)


@triton.jit
def _plane(t, hh, ww, h_ptr, rows, k_ok, n_ok, T, H, W, s, b, P, ww0, ww1, wh0, wh1):
    """One source frame's taps at rows hh, hh + 1 and columns ww, ww + 1, blended along
    W, then H."""
    top = _blend(_tap(h_ptr, rows, k_ok, n_ok, t, hh, ww, T, H, W, s, b, P),
                 _tap(h_ptr, rows, k_ok, n_ok, t, hh, ww + 1, T, H, W, s, b, P),
                 ww0, ww1, ww0 != 0.0, ww1 != 0.0)  # fmt: skip
    bottom = _blend(_tap(h_ptr, rows, k_ok, n_ok, t, hh + 1, ww, T, H, W, s, b, P),
                    _tap(h_ptr, rows, k_ok, n_ok, t, hh + 1, ww + 1, T, H, W, s, b, P),
                    ww0, ww1, ww0 != 0.0, ww1 != 0.0)  # fmt: skip
    return _blend(top, bottom, wh0, wh1, wh0 != 0.0, wh1 != 0.0)


@triton.jit
def interp_gemm_kernel(
    w_ptr, h_ptr, scale_ptr, bias_ptr, base_ptr, wts_ptr, r_ptr, y_ptr,
    M, K, P, T, H, W,
    RESIDUAL: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """y = w @ B (+ r) with B the trilinear shift of relu(h * scale + bias) (a rubiks3d
    block's shift with its prologue, stride 1, no padding): ``base`` (3, K) int32 the
    floor of each channel's (t, h, w) shift, ``wts`` (6, K) its corner weights (t0, t1,
    h0, h1, w0, w1); blended along W, then H, then T, as the shift kernels do."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    m_ok = rm < M
    n_ok = rn < P
    col = rn % W
    row = (rn // W) % H
    frame = (rn // (H * W)) % T
    clip_base = rn - (frame * H + row) * W - col  # the point of (frame 0, row 0, column 0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        a = tl.load(w_ptr + rm[:, None] * K + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)  # fmt: skip
        s = tl.load(scale_ptr + rk, mask=k_ok, other=0.0)[:, None]
        b = tl.load(bias_ptr + rk, mask=k_ok, other=0.0)[:, None]
        ft = tl.load(base_ptr + rk, mask=k_ok, other=0)[:, None]
        fh = tl.load(base_ptr + K + rk, mask=k_ok, other=0)[:, None]
        fw = tl.load(base_ptr + 2 * K + rk, mask=k_ok, other=0)[:, None]
        wt0 = tl.load(wts_ptr + rk, mask=k_ok, other=0.0)[:, None]
        wt1 = tl.load(wts_ptr + K + rk, mask=k_ok, other=0.0)[:, None]
        wh0 = tl.load(wts_ptr + 2 * K + rk, mask=k_ok, other=0.0)[:, None]
        wh1 = tl.load(wts_ptr + 3 * K + rk, mask=k_ok, other=0.0)[:, None]
        ww0 = tl.load(wts_ptr + 4 * K + rk, mask=k_ok, other=0.0)[:, None]
        ww1 = tl.load(wts_ptr + 5 * K + rk, mask=k_ok, other=0.0)[:, None]
        rows = rk[:, None].to(tl.int64) * P + clip_base[None, :]
        t = frame[None, :] + ft
        hh = row[None, :] + fh
        ww = col[None, :] + fw
        args = (h_ptr, rows, k_ok, n_ok, T, H, W, s, b, P, ww0, ww1, wh0, wh1)
        first = _plane(t, hh, ww, *args)
        second = _plane(t + 1, hh, ww, *args)
        u = _blend(first, second, wt0, wt1, wt0 != 0.0, wt1 != 0.0)
        acc = _accumulate(acc, a, u, IEEE)
    _finish(acc, r_ptr, y_ptr, rm, rn, M, P, RESIDUAL)


# the interpolating kernel holds eight taps per operand value: tiles without spills in
# both dtypes (ptxas 13.0, sm_90a)
INTERP_CONFIGS = configs(
    (
        (128, 128, 16, 8, 3),
        (64, 128, 16, 8, 3),
        (128, 64, 32, 8, 2),
        (128, 64, 16, 8, 3),
        (64, 64, 32, 8, 3),
        (128, 32, 32, 8, 3),
        (64, 64, 16, 4, 3),
    )
)
tuned_interp_kernel = triton.autotune(INTERP_CONFIGS, key=["M", "K", "P", "RESIDUAL"])(
    interp_gemm_kernel
)


def corners(shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, weights) of a (3, C) shift for ``interp_gemm``: floor of each clamped
    component (int32 (3, C)) and the corner weights (1 - r, r) per axis (float32 (6, C)),
    as the shift kernels compute them (clamp, floor, remainder in float32)."""
    s = shift.float().clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
    f = torch.floor(s)
    r = s - f
    weights = torch.stack([1 - r[0], r[0], 1 - r[1], r[1], 1 - r[2], r[2]])
    return f.to(torch.int32).contiguous(), weights.contiguous()


def interp_gemm(w, h, scale, bias, base, weights, clip, residual=None, config=None, exact=False):
    """``w @ shift(relu(h * scale + bias)) (+ residual)`` (``interp_gemm_kernel``): h (K,
    P) contiguous, ``base`` and ``weights`` from ``corners``, ``clip`` = (T, H, W)."""
    m, k = w.shape
    p = h.shape[1]
    y = torch.empty(m, p, dtype=h.dtype, device=h.device)
    args = (w, h, scale, bias, base, weights, residual if residual is not None else y, y,
            m, k, p, *clip)  # fmt: skip
    flags = dict(RESIDUAL=residual is not None, IEEE=exact and h.dtype == torch.float32)
    launch(interp_gemm_kernel, tuned_interp_kernel, args, flags, (m, p), config)
    return y


# ------------------------------------------------------------------ float64 arithmetic


def moved(a: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(K, N, T, H, W) a with channel k's values read from q[:, k] = (frames, rows,
    columns) further on, 0 outside the clip."""
    out = torch.zeros_like(a)
    _, _, t, h, w = a.shape
    for k in range(a.shape[0]):
        dt, dh, dw = (int(v) for v in q[:, k])
        src = a[k, :, max(dt, 0) : t + min(dt, 0), max(dh, 0) : h + min(dh, 0),
                max(dw, 0) : w + min(dw, 0)]  # fmt: skip
        out[k, :, max(-dt, 0) : t + min(-dt, 0), max(-dh, 0) : h + min(-dh, 0),
            max(-dw, 0) : w + min(-dw, 0)] = src  # fmt: skip
    return out


def reference(w, x, scale, bias, q, dims, residual=None, round_to=None):
    """``gather_gemm`` in float64 from the same inputs (B rounded to ``round_to`` first, as
    a pass writing it would store it)."""
    k = x.shape[0]
    a = torch.relu(x.double() * scale.double()[:, None] + bias.double()[:, None])
    a = a.view(k, *dims)
    if q is not None:
        a = moved(a, q.cpu())
    a = a.reshape(k, -1)
    if round_to is not None:
        a = a.to(round_to).double()
    y = w.double() @ a
    return y if residual is None else y + residual.double()


def interp_reference(w, h, scale, bias, shift, dims, residual=None, round_to=None):
    """``interp_gemm`` in float64 (rubiks_shift's float64 shift of the activated clip)."""
    k = h.shape[0]
    n, t, height, width = dims
    a = torch.relu(h.double() * scale.double()[:, None] + bias.double()[:, None]).cpu()
    clip = a.view(k, n, t, height, width).permute(1, 2, 0, 3, 4)
    moved_clip = shift3d_forward(clip, shift.double().cpu())
    b = moved_clip.permute(2, 0, 1, 3, 4).reshape(k, -1).to(w.device)
    if round_to is not None:
        b = b.to(round_to).double()
    y = w.double() @ b
    return y if residual is None else y + residual.double()


def error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


def check(device: str) -> int:
    """The kernels against float64 on small float32 clips, with and without moves and a
    residual, then the gathered block forms; prints each case's error, 1 if any exceeds
    1e-5."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k, m, dims in ((8, 12, (1, 3, 5, 5)), (20, 17, (2, 4, 3, 6)), (40, 40, (1, 2, 7, 7))):
        p = dims[0] * dims[1] * dims[2] * dims[3]
        x = torch.randn(k, p, generator=g)
        w = torch.randn(m, k, generator=g)
        scale, bias = torch.rand(k, generator=g) + 0.5, torch.randn(k, generator=g) * 0.5
        q = torch.randint(-2, 3, (3, k), generator=g, dtype=torch.int32)
        r = torch.randn(m, p, generator=g)
        for move, res in ((None, None), (q, None), (q, r)):
            args = [t.to(device) for t in (w, x, scale, bias)]
            qd = None if move is None else move.to(device)
            rd = None if res is None else res.to(device)
            got = gather_gemm(*args, qd, dims[1:], rd, config=(16, 16, 16), exact=True)
            e = error(got.cpu(), reference(w, x, scale, bias, move, dims, res))
            worst = max(worst, e)
            print(f"K={k} M={m} clip {dims}: move={move is not None} residual="
                  f"{res is not None}: error {e:.2e}")  # fmt: skip
        shift = (torch.rand(3, k, generator=g) - 0.5) * 5
        shift[:, ::3] = torch.round(shift[:, ::3])  # whole moves: a corner of weight 0
        shift[0, 1::4] = 0
        base, weights = corners(shift)
        for res in (None, r):
            args = [t.to(device) for t in (w, x, scale, bias, base, weights)]
            rd = None if res is None else res.to(device)
            got = interp_gemm(*args, dims[1:], rd, config=(16, 16, 16), exact=True)
            e = error(got.cpu(), interp_reference(w, x, scale, bias, shift, dims, res))
            worst = max(worst, e)
            print(f"K={k} M={m} clip {dims}: interpolated, residual={res is not None}: "
                  f"error {e:.2e}")  # fmt: skip
    d = stage_inputs(16, 6, argparse.Namespace(batch=2, frames=4), torch.float32, device)
    d["config"], d["exact"] = (16, 16, 16), True
    for name, form, want in forms(d, torch.float32):
        if name.endswith("_gathered"):
            e = error(form(d), want)
            worst = max(worst, e)
            print(f"{name}, 16 channels, clip (2, 4, 6, 6): error {e:.2e}")
    print(f"worst {worst:.2e}")
    return 0 if worst <= 1e-5 else 1


# ------------------------------------------------------------------ the timed forms


def stage_inputs(c: int, side: int, args, dtype: torch.dtype, device: str = "cuda") -> dict:
    """One identity block's tensors at a stage: a channel-major clip, folded weights,
    whole-frame and whole-pixel shifts as a hardened AQ block has them."""
    g = torch.Generator().manual_seed(c * 1000 + side)
    n, t = args.batch, args.frames
    x = torch.randn(c, n * t * side * side, generator=g)
    frames = torch.zeros(c, dtype=torch.int32)
    moving = torch.randperm(c, generator=g)[: c // 8]  # the 1/8 budget, half each way
    frames[moving] = torch.where(torch.arange(moving.numel()) % 2 == 0, 1, -1).to(torch.int32)
    spatial = torch.randint(-1, 2, (2, c), generator=g).float()
    spatial += (torch.rand(2, c, generator=g) - 0.5) * 0.8  # rounded by the op
    shift = torch.cat([torch.zeros(1, c), spatial])
    d = dict(
        x=x.to(dtype),
        w1=(torch.randn(c, c, generator=g) / c**0.5).to(dtype),
        w2=(torch.randn(c, c, generator=g) / c**0.5).to(dtype),
        s1=torch.rand(c, generator=g) + 0.5,
        b1=torch.randn(c, generator=g) * 0.5,
        b2=torch.randn(c, generator=g) * 0.5,
        ones=torch.ones(c),
        frames=frames,
        shift=shift,
    )
    d = {key: v.to(device) for key, v in d.items()}
    whole = torch.floor(shift + 0.5).to(torch.int32)
    d["q1"] = torch.stack([frames, torch.zeros_like(frames), torch.zeros_like(frames)]).to(device)
    d["q2"] = whole.to(device)
    d["moves1"], d["moves2"] = (True, False), (False, True)
    d["shift3d"] = ((torch.rand(3, c, generator=g) - 0.5) * 3).to(device)  # a rubiks3d block's
    d["base"], d["weights"] = corners(d["shift3d"])
    d["dims"] = (n, t, side, side)
    return d


def product(w: torch.Tensor, m: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """w @ m (+ skip) as the fused block computes it (``rubiks_models.fused``, gemm
    "auto"): float32 on CUDA without TF32 products as cuDNN's convolution of a (1, C,
    points, 1) image, else one matrix product with the sum fused in."""
    if m.dtype == torch.float32 and m.is_cuda and not torch.backends.cuda.matmul.allow_tf32:
        y = F.conv2d(m.view(1, m.shape[0], -1, 1), w[:, :, None, None]).view(w.shape[0], -1)
        return y if skip is None else skip + y
    return torch.mm(w, m) if skip is None else torch.addmm(skip, w, m)


def aq_block_composed(d: dict) -> torch.Tensor:
    n, t, h, w = d["dims"]
    clip = points_clip(d["x"], n, t, h, w)
    mixed = affine_relu(clip, d["s1"], d["b1"], d["frames"])
    hid = product(d["w1"], clip_points(mixed))
    out = affine_relu_shift3d(points_clip(hid, n, t, h, w), d["ones"], d["b2"], d["shift"],
                              quantize=True)  # fmt: skip
    return product(d["w2"], clip_points(out), d["x"])


def aq_block_gathered(d: dict) -> torch.Tensor:
    clip = d["dims"][1:]
    opts = dict(config=d.get("config"), exact=d.get("exact", False))  # default: autotuned
    hid = gather_gemm(d["w1"], d["x"], d["s1"], d["b1"], d["q1"], clip, moves=d["moves1"],
                      **opts)  # fmt: skip
    return gather_gemm(d["w2"], hid, d["ones"], d["b2"], d["q2"], clip, d["x"],
                       moves=d["moves2"], **opts)  # fmt: skip


def conv1_composed(d: dict) -> torch.Tensor:
    n, t, h, w = d["dims"]
    a = affine_relu(points_clip(d["x"], n, t, h, w), d["s1"], d["b1"])
    return product(d["w1"], clip_points(a))


def conv1_gathered(d: dict) -> torch.Tensor:
    return gather_gemm(d["w1"], d["x"], d["s1"], d["b1"], None, d["dims"][1:],
                       config=d.get("config"), exact=d.get("exact", False))  # fmt: skip


def rubiks3d_block_composed(d: dict) -> torch.Tensor:
    n, t, h, w = d["dims"]
    hid = conv1_composed(d)
    out = affine_relu_shift3d(points_clip(hid, n, t, h, w), d["ones"], d["b2"], d["shift3d"])
    return product(d["w2"], clip_points(out), d["x"])


def rubiks3d_block_gathered(d: dict) -> torch.Tensor:
    hid = conv1_gathered(d)
    return interp_gemm(d["w2"], hid, d["ones"], d["b2"], d["base"], d["weights"],
                       d["dims"][1:], d["x"], config=d.get("config"),
                       exact=d.get("exact", False))  # fmt: skip


def rubiks3d_block_reference(d: dict, dtype: torch.dtype) -> torch.Tensor:
    dims = d["dims"]
    hid = reference(d["w1"], d["x"], d["s1"], d["b1"], None, dims, round_to=dtype)
    return interp_reference(d["w2"], hid.to(dtype), d["ones"], d["b2"], d["shift3d"], dims,
                            d["x"], dtype)  # fmt: skip


def aq_block_reference(d: dict, dtype: torch.dtype) -> torch.Tensor:
    dims = d["dims"]
    hid = reference(d["w1"], d["x"], d["s1"], d["b1"], d["q1"], dims, round_to=dtype)
    return reference(d["w2"], hid.to(dtype), d["ones"], d["b2"], d["q2"], dims, d["x"], dtype)


KINDS = ("aq_block", "rubiks3d_block", "conv1")  # each timed composed and gathered


def forms(d: dict, dtype: torch.dtype) -> list[tuple[str, object, torch.Tensor]]:
    """(name, form, its float64 reference) of every timed form."""
    conv1 = reference(d["w1"], d["x"], d["s1"], d["b1"], None, d["dims"], round_to=dtype)
    aq = aq_block_reference(d, dtype)
    r3d = rubiks3d_block_reference(d, dtype)
    return [
        ("aq_block_composed", aq_block_composed, aq),
        ("aq_block_gathered", aq_block_gathered, aq),
        ("rubiks3d_block_composed", rubiks3d_block_composed, r3d),
        ("rubiks3d_block_gathered", rubiks3d_block_gathered, r3d),
        ("conv1_composed", conv1_composed, conv1),
        ("conv1_gathered", conv1_gathered, conv1),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="the kernel against float64, exit")
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--stages", nargs="+", default=["72x56", "144x28", "288x14", "576x7"],
                    help="CHANNELSxSIDE (the fused model runs 56² frame by frame: its row "
                         "says whether gathered products would take that stage too)")  # fmt: skip
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.check:
        return check("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        ap.error("timing needs a CUDA device (--check runs anywhere)")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for stage in args.stages:
            c, side = (int(v) for v in stage.split("x"))
            d = stage_inputs(c, side, args, dtype)
            row = dict(dtype=name, channels=c, side=side)
            for form, fn, ref in forms(d, dtype):
                row[form + "_error"] = error(fn(d), ref)
                row[form + "_us"] = time_us(lambda fn=fn, d=d: fn(d), "cuda")
            copy_src = d["x"].clone()
            row["copy_us"] = time_us(lambda s=copy_src, x=d["x"]: x.copy_(s), "cuda")
            rows.append(row)
            print(f"{name} {c}x{side}²: " + "; ".join(
                f"{kind} {row[kind + '_composed_us']:.1f} -> {row[kind + '_gathered_us']:.1f} µs "
                f"(errors {row[kind + '_composed_error']:.1e} / "
                f"{row[kind + '_gathered_error']:.1e})" for kind in KINDS
            ) + f"; copy {row['copy_us']:.1f} µs", flush=True)  # fmt: skip
    print("\nµs per call, composed passes / gathered products")
    print("| dtype | stage | copy | " + " | ".join(KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    for r in rows:
        cells = " | ".join(f"{r[k + '_composed_us']:.1f} / {r[k + '_gathered_us']:.1f}"
                           for k in KINDS)  # fmt: skip
        print(f"| {r['dtype']} | {r['channels']} x {r['side']}² | {r['copy_us']:.1f} | {cells} |")
    if args.json:
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                    triton=triton.__version__)  # fmt: skip
        text = json.dumps(dict(meta=meta, rows=rows), indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
