"""Checks that need a real GPU: graph capture, the fast launch path, large shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import rel_err, requires_cuda
from test_op import check_against_reference

from rubiks_shift import rubiks_shift3d

pytestmark = requires_cuda


def _fwd_bwd(x, shift, gy, **kw):
    x = x.detach().clone().requires_grad_()
    shift = shift.detach().clone().requires_grad_()
    y = rubiks_shift3d(x, shift, **kw)
    y.backward(gy)
    return y.detach(), x.grad, shift.grad


def test_cuda_graph_capture_and_replay():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 8, 16, 16, device="cuda", generator=g)
    shift = torch.nn.Parameter(torch.rand(3, 8, device="cuda", generator=g) * 4 - 2)
    gy = torch.randn(2, 4, 8, 8, 8, device="cuda", generator=g)
    static_x = x.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles kernels) outside the capture
        for _ in range(2):
            rubiks_shift3d(static_x, shift, (1, 2, 2)).backward(gy)
    torch.cuda.current_stream().wait_stream(stream)
    static_x.grad = None
    shift.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = rubiks_shift3d(static_x, shift, (1, 2, 2))
        y.backward(gy)
    for _ in range(3):
        new_x = torch.randn(x.shape, device="cuda", generator=g)
        static_x.data.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        ey, egx, egs = _fwd_bwd(new_x, shift, gy, stride=(1, 2, 2))
        assert torch.equal(y, ey)
        assert torch.equal(static_x.grad, egx)
        assert torch.equal(shift.grad, egs)


@pytest.mark.parametrize(
    "stride,name",
    [
        ((1, 1, 1), "gather_frames"),
        ((1, 2, 2), "gather"),
    ],
)
def test_fast_launch_matches_numba_launch(stride, name):
    """The hand-built launch gives what Numba's own launch path gives for the same kernel."""
    from numba import cuda

    from rubiks_shift import _cuda, _cuda_launch, _cuda_plan

    x = torch.randn(2, 3, 5, 9, 7, device="cuda")
    shift = torch.rand(3, 5, device="cuda") * 4 - 2
    y_shape = _cuda.output_shape(x.shape, stride, (0, 0, 0))
    kernels = _cuda_launch.kernel_set("float32", "float32")
    (step,) = _cuda_plan.gather_plan(tuple(x.shape), y_shape, stride, (0, 0, 0), False, False)
    assert step.name == name
    y_fast = torch.full(y_shape, float("nan"), device="cuda")
    _cuda_launch.run(kernels, step, (x, shift, y_fast), x.get_device())
    compiled = getattr(kernels, name).compile(getattr(kernels, name + "_sig"))
    y_numba = torch.full_like(y_fast, float("nan"))
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
    args = [x.data_ptr(), shift.data_ptr(), y_numba.data_ptr(), *step.scalars]
    compiled.launch(args, step.grid, step.block, stream)
    torch.cuda.synchronize()
    assert torch.equal(y_fast, y_numba)
    reference = _cuda.forward(x.double(), shift.double(), stride, (0, 0, 0), False)
    assert rel_err(y_fast, reference) < 1e-6


@pytest.mark.parametrize(
    "shape,stride",
    [
        ((8, 8, 72, 56, 56), (1, 1, 1)),
        ((8, 8, 72, 112, 112), (1, 2, 2)),
        ((8, 8, 576, 7, 7), (1, 1, 1)),
    ],
)
def test_network_shapes_against_cpu_float64(shape, stride):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    shift = torch.rand(3, shape[2], generator=g) * 6 - 3
    shift[:, :4] = shift[:, :4].round()
    y = rubiks_shift3d(x.cuda(), shift.cuda(), stride)
    gy = torch.randn(y.shape, generator=g)
    gpu = _fwd_bwd(x.cuda(), shift.cuda(), gy.cuda(), stride=stride, normalize_grad=False)
    cpu = _fwd_bwd(x.double(), shift.double(), gy.double(), stride=stride, normalize_grad=False)
    for a, b in zip(gpu, cpu, strict=True):
        assert rel_err(a, b) < 1e-5
    again = _fwd_bwd(x.cuda(), shift.cuda(), gy.cuda(), stride=stride, normalize_grad=False)
    for a, b in zip(gpu, again, strict=True):
        assert torch.equal(a, b)


def test_more_slabs_than_grid_rows():
    """n * t beyond the 65535 grid-row limit is split into several launches."""
    x = torch.randn(8200, 8, 2, 3, 3)
    shift = torch.rand(3, 2) * 2 - 1
    gy = torch.randn(8200, 8, 2, 3, 3)
    gpu = _fwd_bwd(x.cuda(), shift.cuda(), gy.cuda(), normalize_grad=False)
    cpu = _fwd_bwd(x.double(), shift.double(), gy.double(), normalize_grad=False)
    for a, b in zip(gpu, cpu, strict=True):
        assert rel_err(a, b) < 1e-5


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    shape=st.tuples(
        st.integers(1, 2),
        st.integers(1, 5),
        st.integers(1, 4),
        st.integers(1, 40),
        st.integers(1, 40),
    ),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    scale=st.sampled_from([0.5, 2.0, 8.0, 60.0, 1e6]),
    quantize=st.booleans(),
    integers=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_larger_planes_match_reference(shape, stride, padding, scale, quantize, integers, seed):
    """Planes up to 40 x 40: several row groups and row chunks per plane, edge columns
    inside warps, every walk of the gather and the cell path of the shift gradient."""
    check_against_reference("cuda", shape, stride, padding, scale, quantize, integers, seed)


def _fresh_python(script: str, cache_dir=None):
    """Run ``script`` in a new Python process (nothing compiled, no CUDA state; with
    ``cache_dir``, its kernel cache there)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if cache_dir is not None:
        env["RUBIKS_SHIFT_CACHE_DIR"] = str(cache_dir)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )


def test_first_cuda_call_of_a_process_announces_its_compile(tmp_path):
    """On a real GPU the one-time compile takes seconds: a fresh process with an empty
    kernel cache (the shared one may hold the kernel already: other tests fill it) logs
    the notice, naming the kernel and dtype, once."""
    script = (
        "import logging, torch\n"
        "from rubiks_shift import _compile_notice, rubiks_shift3d\n"
        "_compile_notice.DELAY_S = 0.2\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "x = torch.randn(1, 2, 3, 4, 4, device='cuda', dtype=torch.float16)\n"
        "s = torch.full((3, 3), 0.25, device='cuda')\n"
        "for _ in range(2):\n"
        "    rubiks_shift3d(x, s)\n"
        "torch.cuda.synchronize()\n"
    )
    done = _fresh_python(script, tmp_path / "kernels")
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "rubiks-shift: compiling" in line]
    assert len(notices) == 1, done.stderr
    from rubiks_shift import _cuda_plan

    shape = (1, 2, 3, 4, 4)
    (step,) = _cuda_plan.gather_plan(shape, shape, (1, 1, 1), (0, 0, 0), False, False, "float16")
    assert f"CUDA {step.name} kernel for float16" in notices[0]  # the stride-1 gather


def _current_context() -> int:
    import ctypes

    ctx = ctypes.c_void_p()
    assert ctypes.CDLL("libcuda.so.1").cuCtxGetCurrent(ctypes.byref(ctx)) == 0
    return ctx.value or 0


def test_launch_from_a_thread_without_a_context():
    """A host thread that has made no CUDA runtime call has no current context (autograd's
    backward thread when our kernel is its first launch): the op still runs there, kernels
    compiled in another thread, output memory served from PyTorch's cache."""
    import threading

    x = torch.randn(2, 3, 4, 8, 8, device="cuda")
    shift = torch.rand(3, 4, device="cuda") * 2 - 1
    expected = rubiks_shift3d(x, shift)  # compiles here, in the main thread
    del expected
    torch.cuda.synchronize()
    seen: dict = {}

    def work():
        seen["context before"] = _current_context()
        try:
            seen["y"] = rubiks_shift3d(x, shift)
            torch.cuda.current_stream().synchronize()
        except Exception as exc:  # reported in the main thread
            seen["error"] = exc

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen["context before"] == 0, "the thread already had a context: nothing tested"
    assert "error" not in seen, seen.get("error")
    assert torch.equal(seen["y"], rubiks_shift3d(x, shift))


def test_backward_whose_first_launch_is_on_autograd_thread():
    """Forward in this thread, backward on autograd's device thread: in a fresh process,
    so the backward's kernels are already compiled and the device thread has made no call."""
    script = (
        "import torch\n"
        "from rubiks_shift import rubiks_shift3d\n"
        "x = torch.randn(2, 3, 4, 8, 8, device='cuda', requires_grad=True)\n"
        "s = torch.nn.Parameter(torch.rand(3, 4, device='cuda'))\n"
        "rubiks_shift3d(x.detach(), s.detach())\n"  # compiles the gather in this thread
        "y = rubiks_shift3d(x, s)\n"
        "y.backward(torch.ones_like(y))\n"
        "torch.cuda.synchronize()\n"
        "assert torch.isfinite(x.grad).all() and torch.isfinite(s.grad).all()\n"
        "print('ok')\n"
    )
    done = _fresh_python(script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
