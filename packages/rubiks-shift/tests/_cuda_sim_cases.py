"""Run the CUDA kernels under Numba's CUDA simulator on tiny shapes against the reference.

Executed in a subprocess by test_cuda_kernels.py (the simulator must be enabled before
numba is imported). Prints one line per case and exits non-zero on a mismatch.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
from dataclasses import replace

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rubiks_shift import _cuda, _cuda_kernels, _cuda_launch, _cuda_plan, reference  # noqa: E402
from rubiks_shift._cuda_tuning import TUNING  # noqa: E402
from rubiks_shift._normalize import normalize_shift_grad  # noqa: E402

CASES = [
    # shape, stride, padding, quantize, x dtype
    ((1, 3, 2, 4, 5), (1, 1, 1), (0, 0, 0), False, torch.float64),
    ((1, 3, 2, 5, 4), (1, 2, 2), (0, 1, 1), False, torch.float64),
    ((1, 2, 2, 4, 4), (1, 1, 1), (0, 0, 0), True, torch.float64),
    ((2, 3, 2, 3, 3), (2, 1, 3), (1, 0, 1), False, torch.float64),
    ((1, 2, 3, 3, 4), (1, 1, 1), (0, 0, 0), False, torch.float32),
    ((1, 2, 2, 3, 3), (1, 1, 1), (0, 0, 0), False, torch.float16),
    # 16+ rows: several rows per thread, the row-reuse (stride 1) and generic (stride 2) paths
    ((1, 2, 2, 18, 3), (1, 1, 1), (0, 0, 0), False, torch.float64),
    ((1, 2, 3, 35, 2), (1, 2, 1), (0, 1, 0), False, torch.float64),
    ((1, 2, 2, 17, 2), (1, 1, 1), (0, 0, 0), True, torch.float64),
    # wide enough rows for the 4-column tile fast path of the shift gradient
    ((1, 2, 3, 17, 13), (1, 1, 1), (0, 0, 0), False, torch.float64),
    # 5 frames, 11 rows, padding: frame chunks and row bands with tails in the frame walk
    ((1, 5, 2, 11, 4), (1, 1, 1), (1, 1, 0), False, torch.float64),
    # 20 rows: full 8-row bands inside the plane (the frame walk's unmasked passes, two
    # row taps and, quantized or at an integer row shift, one) and a partial last band
    ((1, 3, 3, 20, 5), (1, 1, 1), (0, 0, 0), False, torch.float64),
    ((1, 3, 2, 20, 5), (1, 1, 1), (0, 1, 0), True, torch.float32),
    # one-frame clips: the affine form takes the row walk there (a 2-D shift's fused pass)
    ((3, 1, 2, 5, 4), (1, 1, 1), (0, 0, 0), False, torch.float32),
]


def random_cases(count: int, seed: int = 7) -> list:
    """Seeded random tiny cases: one-column and one-row planes, strides up to 3 (the
    adjoint's stride-2 and generic row walks), paddings, quantize, both dtypes."""
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    cases = []
    for i in range(count):
        shape = (1, pick(1, 3), pick(1, 2), pick(1, 9), pick(1, 7))
        stride = (pick(1, 2), pick(1, 3), pick(1, 3))
        padding = (pick(0, 1), pick(0, 2), pick(0, 2))
        dtype = torch.float32 if i % 4 == 3 else torch.float64
        cases.append((shape, stride, padding, i % 3 == 2, dtype))
    return cases


FIXED = len(CASES)
CASES += random_cases(14)


def check_bounds() -> bool:
    """Under the simulator a kernel's pointer may leave its array (as on a GPU, where it
    is then not read through), and every element read or written through it is checked."""
    import numpy as np

    from rubiks_shift._cuda_device import ldg_if, offset

    a = np.arange(6.0)
    p = offset(offset(a, -4), 5)  # outside, then back inside: element 1
    caught = 0
    for pointer, index in ((offset(a, 0), -1), (offset(a, 1), 5)):  # elements -1 and 6
        try:
            pointer[index]  # numpy's a[-1] would silently read the last element
        except IndexError:
            caught += 1
    ok = p[0] == 1.0 and caught == 2 and ldg_if(offset(a, -3), 0, 0, 1) == 0.0
    print(f"{'ok-bounds' if ok else 'FAIL-bounds'} caught={caught}")
    return ok


def check_output_strides() -> bool:
    """The forward's output has canonical contiguous strides even where the input is
    contiguous with an unusual stride on a size-1 dimension (the same-shape output is
    allocated by empty_like, which would otherwise copy that stride)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 2, 3, 4, 5, generator=g, dtype=torch.float64)
    x = base.as_strided(base.shape, (999, 60, 20, 5, 1))  # N = 1: still contiguous
    shift = torch.rand(3, 3, generator=g, dtype=torch.float64) * 2 - 1
    y = _cuda.forward(x, shift, (1, 1, 1), (0, 0, 0), False)
    y_ref = reference.shift3d_forward(x, shift, (1, 1, 1), (0, 0, 0), False)
    close = torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    ok = x.is_contiguous() and y.stride() == (120, 60, 20, 5, 1) and close
    print(f"{'ok-strides' if ok else 'FAIL-strides'} {y.stride()}")
    return ok


PROLOGUE_CASES = [  # (shape, dtype, storage offset: 1 leaves bfloat16 off 4-byte words)
    ((1, 2, 3, 9, 33), torch.float32, 0),  # rows over a block's span (32 threads x 8 values)
    ((2, 3, 3, 2, 3), torch.float32, 0),  # frames shorter than a block's width
    ((2, 1, 2, 9, 37), torch.float16, 0),
    ((1, 3, 2, 7, 7), torch.float64, 0),
    ((2, 3, 3, 2, 4), torch.bfloat16, 0),  # even planes: pairs
    ((1, 2, 1, 17, 32), torch.bfloat16, 0),  # pairs, rows over a block's span (256 words)
    ((2, 3, 2, 3, 5), torch.bfloat16, 0),  # odd planes: one value at a time
    ((2, 3, 3, 2, 4), torch.bfloat16, 1),  # even planes, misaligned: one value at a time
]


def _prologue_paired(clip: torch.Tensor, shifted: bool) -> bool:
    """Whether affine_relu's last launch over ``clip`` moved bfloat16 pairs."""
    x, major = _cuda._kernel_layout(clip)
    key = (x.shape, x.dtype, major, shifted, x.data_ptr() % 4 == 0)
    return bool(_cuda._PROLOGUE_PLANS[key][1].scalars.paired)


def check_prologue() -> int:
    """affine_relu (the prologue alone, without and with a frame shift) bit for bit
    against the affine pass with that temporal shift, contiguous and channel-major, with
    rows longer and shorter than a block's span (32 threads here: the simulator runs a
    thread per CUDA thread). Returns the failures."""
    g = torch.Generator().manual_seed(5)
    failures = 0
    with _cuda.tuned(replace(TUNING, prologue_threads=32)):
        for index, (shape, dtype, start) in enumerate(PROLOGUE_CASES):
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            flat = torch.randn(start + math.prod(shape), generator=g).to(dtype)
            x = flat[start:].view(shape)
            scale = (torch.rand(shape[2], generator=g) * 2 - 0.5).to(acc)
            bias = (torch.randn(shape[2], generator=g) * 0.5).to(acc)
            frames = (torch.arange(shape[2], dtype=torch.int32) % 3) - 1  # -1, 0, +1, ...
            major = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
            if start:  # the channel-major copy at the same offset
                flat = torch.zeros(start + x.numel(), dtype=dtype)
                flat[start:] = x.permute(2, 0, 1, 3, 4).flatten()
                major = flat[start:].view(shape[2], *shape[:2], *shape[3:]).permute(1, 2, 0, 3, 4)
            for clip in (x, major):
                shifts = [None, frames]
                if index == 0:  # shifts far beyond the clip, both ways
                    shifts.append(torch.tensor([-(2**31), 2**31 - 1, 1], dtype=torch.int32))
                for frame_shift in shifts:
                    shift = torch.zeros(3, shape[2], dtype=acc)
                    if frame_shift is not None:
                        shift[0] = frame_shift.to(acc)
                    y = _cuda.affine_relu(clip, scale, bias, frame_shift)
                    z = _cuda.forward_affine(clip, scale, bias, shift, (1, 1, 1), (0, 0, 0), True)
                    ok = torch.equal(y, z) and y.stride() == z.stride()
                    failures += not ok
                    what = "shifted" if frame_shift is not None else "plain"
                    paired = _prologue_paired(clip, frame_shift is not None)
                    label = "ok-prologue" if ok else "FAIL-prologue"
                    print(f"{label} {what} {shape} {dtype} {clip.stride()} paired={paired}")
    return failures


INTEGER_SHIFT_CASES = [  # (shape, dtype): tasks of whole and short slab groups (a task
    # takes 4 float64, 8 float32 or 16 16-bit values, one slab apart)
    ((2, 3, 5, 3, 5), torch.float64),  # 6 slabs: 4 + 2
    ((3, 6, 4, 3, 7), torch.float32),  # 18 slabs: 8 + 8 + 2
    ((2, 9, 5, 2, 3), torch.bfloat16),  # 18 slabs: 16 + 2
    ((1, 3, 4, 1, 6), torch.float16),  # one row, 3 slabs
]


def check_integer_shift() -> int:
    """The quantized shift at stride 1 (``shift_integer``: forward, affine form, grad_x)
    bit for bit against the gathers it replaces (``integer_shift`` off) and against the
    reference, contiguous and channel-major, with shifts beyond the clip and a NaN one.
    Returns the failures."""
    g = torch.Generator().manual_seed(11)
    failures = 0
    off = replace(TUNING, prologue_threads=32, integer_shift=False)
    on = replace(TUNING, prologue_threads=32)
    for shape, dtype in INTEGER_SHIFT_CASES:
        channels = shape[2]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        x = torch.randn(shape, generator=g).to(dtype)
        shift = (torch.rand(3, channels, generator=g) * 7 - 3.5).to(acc)
        shift[:, 0] = torch.tensor([0.5, -0.5, -1.5])  # ties round up
        shift[:, -1] = torch.tensor([-40.0, float("inf"), 2.0])  # beyond the clip
        scale = (torch.rand(channels, generator=g) + 0.5).to(acc)
        bias = (torch.rand(channels, generator=g) * 2 - 0.5).to(acc)
        view = (1, 1, -1, 1, 1)
        a = torch.relu(x.double() * scale.double().view(view) + bias.double().view(view))
        s64 = shift.double().clamp(-1e6, 1e6)
        y_ref = reference.shift3d_forward(x.double(), s64, (1, 1, 1), (0, 0, 0), True)
        a_ref = reference.shift3d_forward(a, s64, (1, 1, 1), (0, 0, 0), True)
        gx_ref, _ = reference.shift3d_backward(
            x.double(), x.double(), s64, (1, 1, 1), (0, 0, 0), True
        )
        for major in (False, True):
            clip = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4) if major else x
            results = {}
            for name, tuning in (("gather", off), ("integer", on)):
                with _cuda.tuned(tuning):
                    y = _cuda.forward(clip, shift, (1, 1, 1), (0, 0, 0), True)
                    z = _cuda.forward_affine(clip, scale, bias, shift, (1, 1, 1), (0, 0, 0), True)
                    gx, _ = _cuda.backward(
                        clip, clip, shift, (1, 1, 1), (0, 0, 0), True, True, 1.0, True, False
                    )
                results[name] = (y, z, gx)
            steps = _cuda._forward_plan(
                (clip.shape, dtype, shift.dtype, (1, 1, 1), (0, 0, 0), True, major)
            ).steps
            ok = [step.name for step in steps] == ["shift_integer"]
            ok &= all(
                torch.equal(p, q) and p.stride() == q.stride()
                for p, q in zip(results["gather"], results["integer"], strict=True)
            )
            y, z, gx = results["integer"]
            ok &= torch.allclose(y.double(), y_ref, rtol=0, atol=0)
            ok &= torch.allclose(z.double(), a_ref, rtol=1e-2 if dtype != acc else 1e-6, atol=1e-2)
            ok &= torch.allclose(gx.double(), gx_ref, rtol=0, atol=0)
            failures += not ok
            print(f"{'ok-integer' if ok else 'FAIL-integer'} {shape} {dtype} major={major}")
        nan = shift.clone()
        nan[1, 1] = float("nan")
        with _cuda.tuned(on):
            y = _cuda.forward(x, nan, (1, 1, 1), (0, 0, 0), True)
        ok = bool(y[:, :, 1].isnan().all()) and not bool(y[:, :, 0].isnan().any())
        failures += not ok
        print(f"{'ok-integer-nan' if ok else 'FAIL-integer-nan'} {shape} {dtype}")
    return failures


BATCH_NORM_CASES = [  # (B, C, H, W), dtype; two spans per channel, cut mid-row, in the
    # first two (1280 and 2304 values against 1024 and 2048 per block round)
    ((5, 2, 16, 16), torch.float64),
    ((9, 2, 16, 16), torch.float32),
    ((2, 2, 6, 4), torch.bfloat16),
    ((7, 2, 1, 1), torch.float64),
    # bfloat16 pairs in two spans per channel, cut mid-row (4500 values against 4096 per
    # block round; 1125 words a span, rows of 450)
    ((5, 2, 30, 30), torch.bfloat16),
]


def _bn_paired(x: torch.Tensor, one_block: bool) -> bool:
    """Whether the batch-norm plan last made for ``x`` moves its values in pairs (every
    launch of the form)."""
    key = (x.shape, x.dtype, 1e-5, 0.1, _cuda._word_aligned(x))
    plan = _cuda._BN_PLANS[key][1]
    if one_block:
        steps = (plan.channel_forward, plan.channel_backward)
    else:
        steps = (plan.partial, plan.grad_partial, plan.normalize, plan.grad_input)
    flags = {step.scalars.paired for step in steps}
    if len(flags) != 1:
        raise AssertionError(f"a plan pairs some launches, not all: {plan}")
    return bool(flags.pop())


# one block of 512 threads is slow in the simulator: one channel, in pairs, several rounds
WIDE_CASE = ((3, 1, 30, 30), torch.bfloat16)
BATCH_NORM_FORMS = {  # Tuning values of each form
    "spans": dict(batch_norm_channel_values=0),
    # one block per channel of batch_norm_threads (256), the kernels built for up to 512
    "one-block": dict(batch_norm_channel_values=2**40),
    # one block per channel of batch_norm_wide_threads (512), the widest it is built for
    "wide-one-block": dict(batch_norm_channel_values=2**40, batch_norm_narrow_values=0),
}


def check_batch_norm() -> int:
    """Training batch norm + ReLU (statistics, running statistics, the forward, grad_x,
    grad_weight, grad_bias) against torch's in float64, and bit for bit again on a second
    run (fixed-order sums) and from ``batch_norm_relu_apply`` (y), with each channel's
    values cut into spans of several blocks and as one block per channel, narrow and wide.
    Returns the failures."""
    g = torch.Generator().manual_seed(11)
    small = replace(TUNING, prologue_threads=32, batch_norm_blocks=5)
    failures = 0
    with _cuda.tuned(small):
        narrow = itertools.product(BATCH_NORM_CASES, ("spans", "one-block"))
        for (shape, dtype), form in [*narrow, (WIDE_CASE, "wide-one-block")]:
            one_block = form != "spans"
            form_tuning = replace(small, **BATCH_NORM_FORMS[form])
            _cuda.use_tuning(form_tuning)
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            c = shape[1]
            x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3).to(dtype)
            dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
            w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
            b = torch.randn(c, generator=g, dtype=torch.float64)
            rm = torch.randn(c, generator=g, dtype=torch.float64)
            rv = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
            xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
            rm_ref, rv_ref = rm.clone(), rv.clone()
            y_ref = torch.relu(F.batch_norm(xr, rm_ref, rv_ref, wr, br, True, 0.1, 1e-5))
            y_ref.backward(dy.double())
            runs = []
            for _ in range(2):
                run_m, run_v = rm.to(acc).clone(), rv.to(acc).clone()
                y, stats = _cuda.batch_norm_relu_forward(
                    x, w.to(acc), b.to(acc), run_m, run_v, 0.1, 1e-5
                )
                gx, gw, gb = _cuda.batch_norm_relu_backward(dy, x, w.to(acc), stats, 1e-5, 0.1)
                runs.append((y, run_m, run_v, gx, gw, gb))
                stats_of_run = stats
                again = _cuda.batch_norm_relu_apply(x, stats)  # y recomputed: bit for bit
                failures += not torch.equal(again, y)
            tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
            expected = (y_ref, rm_ref, rv_ref, xr.grad, wr.grad, br.grad)
            ok = all(
                torch.allclose(got.double(), want.detach(), rtol=tol, atol=tol)
                for got, want in zip(runs[0], expected, strict=True)
            )
            ok = ok and all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
            if dtype in (torch.bfloat16, torch.float32):  # pairs against single values
                paired = _bn_paired(x, one_block)
                with _cuda.tuned(replace(form_tuning, batch_norm_pairs=False)):
                    y1, s1 = _cuda.batch_norm_relu_forward(
                        x, w.to(acc), b.to(acc), rm.to(acc).clone(), rv.to(acc).clone(), 0.1, 1e-5
                    )
                    g1 = _cuda.batch_norm_relu_backward(dy, x, w.to(acc), s1, 1e-5, 0.1)[0]
                    # the same stats give the same y, a value at a time or in pairs
                    again = _cuda.batch_norm_relu_apply(x, stats_of_run)
                    paired = paired and not _bn_paired(x, one_block)
                ok = ok and paired and torch.equal(again, runs[1][0])
                ok = ok and all(
                    torch.allclose(got.double(), want.detach(), rtol=tol, atol=tol)
                    for got, want in ((y1, y_ref), (g1, xr.grad))
                )
                print(f"bn pairs={paired}")
            if dtype == torch.float64:  # a NaN input: NaN where torch's gives NaN, as torch
                xn = x.detach().clone()
                xn.view(-1)[0] = float("nan")
                yn, sn = _cuda.batch_norm_relu_forward(
                    xn, w.to(acc), b.to(acc), rm.to(acc).clone(), rv.to(acc).clone(), 0.1, 1e-5
                )
                gn = _cuda.batch_norm_relu_backward(dy, xn, w.to(acc), sn, 1e-5, 0.1)[0]
                xr = xn.clone().requires_grad_()
                yr = torch.relu(F.batch_norm(xr, rm.clone(), rv.clone(), w, b, True, 0.1, 1e-5))
                yr.backward(dy)
                ok = (
                    ok
                    and torch.equal(yn.isnan(), yr.isnan())
                    and torch.equal(gn.isnan(), xr.grad.isnan())
                )
            failures += not ok
            print(f"{'ok' if ok else 'FAIL'}-batch-norm {shape} {dtype} {form}")
    return failures


STEM_CASES = [  # (N, H, W, C, dtype): odd and even sizes, one-pixel frames, two groups
    ((2, 7, 9, 5), torch.float32),
    ((1, 8, 6, 40), torch.float32),
    ((3, 1, 1, 3), torch.float64),
    ((1, 6, 5, 7), torch.float64),
    ((2, 5, 6, 4), torch.bfloat16),
    ((1, 4, 7, 6), torch.float16),
]


def check_stem() -> int:
    """The stem against torch's convolution in float64, with 1, 3 and 4 pixels per
    thread (each kernel built for its tuning and launched directly; rows whose width is
    not a multiple of the pixels end in a shorter run). Returns the failures."""
    g = torch.Generator().manual_seed(13)
    failures = 0
    for ((n, h, w, c), dtype), pixels in itertools.product(STEM_CASES, (1, 3, 4)):
        tuning = replace(TUNING, stem_pixels=pixels, stem_group=32, stem_threads=32)
        storage = str(dtype).removeprefix("torch.")
        kernels = _cuda_kernels.Kernels(storage, "float32", tuning)
        x = torch.randn(n, 3, h, w, generator=g, dtype=torch.float64)
        weight = torch.randn(c, 3, 3, 3, generator=g, dtype=torch.float64)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        y = torch.full((n, c, (h + 1) // 2, (w + 1) // 2), float("nan"), dtype=dtype)
        step = _cuda_plan.stem_plan((n, 3, h, w), c, tuning)
        _cuda_launch.run(kernels, step, (x.to(dtype), weight.to(acc), y), -1)
        y_ref = F.conv2d(x.to(dtype).double(), weight.to(acc).double(), stride=2, padding=1)
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}
        tol = tol.get(dtype, 2e-3)
        err = float((y.double() - y_ref).abs().max() / y_ref.abs().max())
        ok = err < tol  # NaN (a value never written) fails
        failures += not ok
        print(f"{'ok' if ok else 'FAIL'}-stem {(n, h, w, c)} {dtype} pixels={pixels} err={err:.3g}")
    return failures


def run_checks() -> int:
    """The checks of single kernels and settings; the number that failed."""
    failures = 0 if check_bounds() else 1
    failures += not check_output_strides()
    failures += check_prologue()
    failures += check_integer_shift()
    failures += check_batch_norm()
    failures += check_stem()
    return failures


def run_cases() -> int:
    """Forward and backward of every case against the float64 reference, and the
    variants of each; the number that failed."""
    g = torch.Generator().manual_seed(0)
    failures = 0
    for index, (shape, stride, padding, quantize, dtype) in enumerate(CASES):
        # both gather task orders on every kind of case (the default picks by dtype and
        # row width, and these rows are all narrower than a warp)
        order = "frames" if index % 2 else "planes"
        _cuda.use_tuning(replace(TUNING, row_walk_order=order))
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        spread = 3.0 if index >= FIXED else 5.0
        shift = torch.rand(3, shape[2], generator=g, dtype=torch.float64) * spread - spread / 2
        if index >= FIXED:  # random cases: fractional shifts, every other case one integer row
            if index % 2:
                shift[index % 3] = shift[index % 3].round()
        else:
            shift[0, 0], shift[1, -1] = 1.0, -1.0  # exact integers: central-difference rule
            if shape[-1] > 8:
                shift[:, 0] = torch.tensor([0.3, -0.7, 1.4])  # fractional: the cell path
            if shape[2] > 2:
                shift[:, 1] = torch.tensor([float("inf"), 0.5, 7.0])  # shifted out entirely
            if shape[1] == 1:  # one-frame clips: a 2-D shift (any temporal one reads zeros)
                shift[0] = 0.0
        y_ref = reference.shift3d_forward(x, shift, stride, padding, quantize)
        gy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
        gx_ref, gs_ref = reference.shift3d_backward(
            gy, x, shift.clamp(-1e6, 1e6), stride, padding, quantize
        )
        gs_ref = normalize_shift_grad(gs_ref, 0.5)
        s = shift.float() if dtype != torch.float64 else shift
        y = _cuda.forward(x.to(dtype), s, stride, padding, quantize)
        gx, gs = _cuda.backward(
            gy.to(dtype), x.to(dtype), s, stride, padding, quantize, True, 0.5, True, True
        )
        tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
        errs = [
            float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12))
            for a, b in ((y, y_ref), (gx, gx_ref), (gs, gs_ref))
        ]
        ok = all(e < tol for e in errs) and y.dtype == dtype and gx.dtype == dtype
        failures += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} {shape} {stride} {padding} q={quantize} {dtype} "
            f"order={order} "
            f"errs={errs} |y|={float(y_ref.norm()):.3g} |gs|={float(gs_ref.norm()):.3g}"
        )
        if index < FIXED:  # the forward with the input prologue (batch norm + ReLU)
            failures += not check_affine(x, s, y_ref, stride, padding, quantize, dtype, g)
            storage = _cuda._STORAGE[dtype]
            if _cuda_plan.affine_takes_pixels(shape, stride, quantize, storage):
                failures += not check_pixel_walk(x, s, stride, padding, dtype, g)
            args = (stride, padding, quantize, dtype)
            failures += not check_channel_major(x, s, gy, (y, gx, gs), *args)
        # where the frame walk is the default, the row walk too, and the frame walk with
        # short bands and frame chunks (the small cases: the simulator is slow)
        if _cuda_plan.frames_walk_applies(shape, stride) and x.numel() <= 400:
            for walk, rows, frames in (("rows", None, None), ("frames", 3, 2)):
                tuning = replace(
                    TUNING, row_walk_order=order, stride_one_walk=walk, integer_shift=False
                )
                failures += not check_layout(
                    x, s, gy, y_ref, gx_ref, stride, padding, quantize, dtype, tuning, rows, frames
                )
    return failures


PARTS = {"checks": run_checks, "cases": run_cases}


def main(parts: list[str]) -> int:
    """Run the named parts (all of them where none is named); 1 if anything failed."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown parts {unknown}; choose from {sorted(PARTS)}")
        return 2
    return 1 if sum(PARTS[p]() for p in parts or PARTS) else 0


def check_affine(x, s, y_ref, stride, padding, quantize, dtype, g) -> bool:
    """forward_affine against the reference forward of relu(x * scale + bias); the bias
    is large enough that a zero read outside the clip would show up as relu(bias)."""
    channels = x.shape[2]
    scale = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    bias = torch.rand(channels, generator=g, dtype=torch.float64) * 2 - 0.5
    view = (1, 1, -1, 1, 1)
    a = torch.relu(x.to(dtype).double() * scale.view(view) + bias.view(view))
    ref = reference.shift3d_forward(a, s.double().clamp(-1e6, 1e6), stride, padding, quantize)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    y = _cuda.forward_affine(x.to(dtype), scale.to(acc), bias.to(acc), s, stride, padding, quantize)
    err = float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    ok = err < tol and y.dtype == dtype and y.shape == y_ref.shape
    print(f"{'ok-affine' if ok else 'FAIL-affine'} {tuple(x.shape)} {stride} err={err}")
    # channel-major planes: the same values, written channel-major
    major = x.to(dtype).permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    y_cm = _cuda.forward_affine(major, scale.to(acc), bias.to(acc), s, stride, padding, quantize)
    layout_ok = y_cm.permute(2, 0, 1, 3, 4).is_contiguous() or y_cm.is_contiguous()
    ok_cm = layout_ok and torch.equal(y_cm, y)
    print(f"{'ok-affine-cm' if ok_cm else 'FAIL-affine-cm'} {tuple(x.shape)} {stride}")
    return ok and ok_cm


# one-row, three-frame tasks, each storage width with the columns its default lacks
PIXEL_TASKS = replace(
    TUNING, pixel_walk_rows=1, pixel_walk_frames=3, pixel_walk_cols=2, pixel_walk_cols_16bit=1
)
NO_PIXEL_WALK = replace(TUNING, pixel_walk_affine_plane=0, pixel_walk_affine_plane_16bit=0)


@functools.cache
def _pixel_task_kernels(storage: str, shift_storage: str) -> _cuda_kernels.Kernels:
    return _cuda_kernels.Kernels(storage, shift_storage, PIXEL_TASKS)


def check_pixel_walk(x, s, stride, padding, dtype, g) -> bool:
    """The pixel walk (the default's tasks and 1-row, 3-frame ones with the other column
    count) bit for bit against the frame walk, with the prologue, both layouts."""
    storage, shift_storage = _cuda._STORAGE[dtype], _cuda._STORAGE[s.dtype]
    channels = x.shape[2]
    scale = torch.rand(channels, generator=g, dtype=torch.float64) + 0.5
    bias = torch.rand(channels, generator=g, dtype=torch.float64) * 2 - 0.5
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale, bias = scale.to(acc), bias.to(acc)
    xs = x.to(dtype)
    ok = True
    for major in (False, True):
        src = xs.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4) if major else xs
        args = (tuple(src.shape), stride, padding, False, False, storage)
        outputs = []
        for tuning in (NO_PIXEL_WALK, TUNING, PIXEL_TASKS):
            kernels = _cuda_launch.kernel_set(storage, shift_storage)
            if tuning is PIXEL_TASKS:
                kernels = _pixel_task_kernels(storage, shift_storage)
            shape = tuple(src.shape)
            y_shape = _cuda.output_shape(shape, stride, padding)
            (step,) = _cuda_plan.gather_plan(
                shape, y_shape, *args[1:], tuning, channel_major=major, affine=True
            )
            step = step._replace(name=step.name + "_affine")
            y = torch.full(y_shape, float("nan"), dtype=dtype)
            if major:
                y = y.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
            _cuda_launch.run(kernels, step, (src, s, y, scale, bias), -1)
            outputs.append((step.name, y))
        (frames_name, want), *pixels = outputs
        ok &= frames_name == "gather_frames_affine"
        for name, got in pixels:
            ok &= name == "gather_pixels_affine" and torch.equal(got, want)
    print(f"{'ok-pixels' if ok else 'FAIL-pixels'} {tuple(x.shape)} {stride} {padding}")
    return ok


def check_channel_major(x, s, gy, frames, stride, padding, quantize, dtype) -> bool:
    """The forward and backward on channel-major clips: the frames' results bit for bit,
    y and grad_x channel-major."""

    def major(t):
        return t.to(dtype).permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)

    xm = major(x)
    y = _cuda.forward(xm, s, stride, padding, quantize)
    ok = y.permute(2, 0, 1, 3, 4).is_contiguous()
    gx, gs = _cuda.backward(major(gy), xm, s, stride, padding, quantize, True, 0.5, True, True)
    ok = ok and gx.permute(2, 0, 1, 3, 4).is_contiguous()
    ok = ok and all(torch.equal(a, b) for a, b in zip((y, gx, gs), frames, strict=True))
    print(f"{'ok-train-cm' if ok else 'FAIL-train-cm'} {tuple(x.shape)} {stride} {padding}")
    return ok


def check_layout(
    x, s, gy, y_ref, gx_ref, stride, padding, quantize, dtype, tuning, rows, frames
) -> bool:
    """One gather kernel and layout (``tuning``'s walk and task order, ``rows`` and
    ``frames`` per task), forward and adjoint, against the reference."""
    storage = _cuda._STORAGE[dtype]
    kernels = _cuda_launch.kernel_set(storage, _cuda._STORAGE[s.dtype])
    errs = []
    for src, ref, adjoint in ((x, y_ref, False), (gy, gx_ref, True)):
        dst = torch.full(ref.shape, float("nan"), dtype=dtype)
        (step,) = _cuda_plan.gather_plan(
            tuple(src.shape), tuple(ref.shape), stride, padding, quantize, adjoint,
            storage, tuning, rows, frames,
        )  # fmt: skip
        _cuda_launch.run(kernels, step, (src.to(dtype), s, dst), -1)
        errs.append(float((dst.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3}[dtype]
    ok = all(e < tol for e in errs)  # NaN (an unwritten output) fails too
    walk = tuning.stride_one_walk
    tag = f"ok-{walk}" if ok else f"FAIL-{walk}"
    print(f"{tag} {tuple(x.shape)} {stride} {padding} rows={rows} frames={frames} errs={errs}")
    return ok


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
