"""Break the host time of one eager CUDA forward call into its parts (microseconds)."""

from __future__ import annotations

import time

import torch

from rubiks_shift import _cuda, rubiks_shift3d


def per_call(fn, calls=3000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    x = torch.randn(1, 2, 4, 4, 4, device="cuda")
    shift = torch.rand(3, 4, device="cuda")
    y = torch.empty_like(x)
    kernels = _cuda._kernels("float32", "float32")
    rubiks_shift3d(x, shift)
    grid, rows = _cuda._geometry(16, 2, 4)
    args = (_cuda._flat(x), _cuda._flat(shift), _cuda._flat(y), 2, 4, 4, 4, 2, 4, 4, 1, 1, 1, 0, 0, 0, 0, rows)
    key = (id(kernels.forward), 0)
    function, kinds = _cuda._Launcher._compiled[key]
    from cuda.core import LaunchConfig, Stream, launch

    stream = Stream.from_handle(torch.cuda.current_stream().cuda_stream)
    config = LaunchConfig(grid=grid, block=(128, 1, 1))
    import ctypes

    flat_args = []
    for kind, value in zip(kinds, args):
        if kind == "a":
            flat_args += (0, 0, value.numel(), 4, value.data_ptr(), value.numel(), 4)
        else:
            flat_args.append(ctypes.c_int64(value))
    int_args = [a.value if isinstance(a, ctypes.c_int64) else a for a in flat_args]
    parts = {
        "public rubiks_shift3d": lambda: rubiks_shift3d(x, shift),
        "torch.ops custom op": lambda: torch.ops.rubiks_shift.shift3d(x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0),
        "_cuda.forward": lambda: _cuda.forward(x, shift, (1, 1, 1), (0, 0, 0), False),
        "_Launcher.launch": lambda: _cuda._Launcher.launch(kernels.forward, kernels.forward_sig, grid, (128, 1, 1), args, 0),
        "cuda.core launch, ctypes args": lambda: launch(stream, config, function, *flat_args),
        "cuda.core launch, int args": lambda: launch(stream, config, function, *int_args),
        "Stream.from_handle": lambda: Stream.from_handle(0),
        "LaunchConfig()": lambda: LaunchConfig(grid=grid, block=(128, 1, 1)),
        "torch.cuda.current_stream": lambda: torch.cuda.current_stream(0).cuda_stream,
        "torch.cuda.device ctx": lambda: torch.cuda.device(x.device).__enter__(),
        "torch.empty cuda": lambda: torch.empty(1, 2, 4, 4, 4, device="cuda"),
        "x.clone": lambda: x.clone(),
    }
    for name, fn in parts.items():
        print(f"{name:<32} {per_call(fn):8.1f} us")


if __name__ == "__main__":
    main()
