"""Host time of eager CUDA calls of the op, forward and forward + backward, and of the
parts of a forward call (microseconds per call; tiny tensors, so the GPU work is
negligible and the loop runs at the host's pace)."""

from __future__ import annotations

import torch
from bench_shift import (  # this folder (run as a script)
    CHAIN,
    EmptyFunction,
    best_us_per_call,
    chain_backward,
)

from rubiks_shift import (
    _cuda,
    _cuda_launch,
    _cuda_plan,
    affine_relu,
    affine_relu_shift3d,
    fused,
    rubiks_shift3d,
)


def main() -> None:
    x = torch.randn(1, 2, 4, 4, 4, device="cuda")
    shift = torch.rand(3, 4, device="cuda")
    xg = x.clone().requires_grad_()
    y = torch.empty_like(x)
    kernels = _cuda_launch.kernel_set("float32", "float32")
    (step,) = _cuda_plan.gather_plan(
        tuple(x.shape), tuple(x.shape), (1, 1, 1), (0, 0, 0), False, False
    )
    shifts = [torch.nn.Parameter(torch.rand(3, 4, device="cuda")) for _ in range(CHAIN)]
    gy = torch.ones_like(x)
    conv_w = torch.nn.Parameter(torch.randn(4, 4, 1, 1, device="cuda"))
    x4 = xg.flatten(0, 1)

    def fwd_bwd(layers: int, layer=rubiks_shift3d) -> None:
        chain_backward(xg, shifts[:layers], gy, layer)

    def conv_fwd_bwd() -> None:
        torch.nn.functional.conv2d(x4, conv_w).backward(gy.flatten(0, 1))

    parts = {
        "public rubiks_shift3d (no grad)": lambda: rubiks_shift3d(x, shift),
        "public rubiks_shift3d (x requires grad)": lambda: rubiks_shift3d(xg, shift),
        "torch.ops custom op": lambda: torch.ops.rubiks_shift.shift3d(
            x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0
        ),
        "_cuda.forward": lambda: _cuda.forward(x, shift, (1, 1, 1), (0, 0, 0), False),
        "_cuda.backward (grad_x and grad_shift)": lambda: _cuda.backward(
            gy, x, shift, (1, 1, 1), (0, 0, 0), False, True, 1.0, True, True
        ),
        "_cuda_launch.run (one launch)": lambda: _cuda_launch.run(
            kernels, step, (x, shift, y), x.get_device()
        ),
        "rubiks_shift3d forward + backward (one call)": lambda: fwd_bwd(1),
        f"rubiks_shift3d forward + backward (per layer of {CHAIN})": lambda: fwd_bwd(CHAIN),
        f"floor: an empty autograd.Function (per layer of {CHAIN})": lambda: fwd_bwd(
            CHAIN, EmptyFunction.apply
        ),
        "conv2d 1x1 forward + backward (scale)": conv_fwd_bwd,
        "torch.empty cuda": lambda: torch.empty(1, 2, 4, 4, 4, device="cuda"),
        "x.clone (scale)": lambda: x.clone(),
    }
    # five interleaved rounds, the best of each: host timings drift with clocks and
    # neighbours, and the first item of a single pass is often an outlier
    best = best_us_per_call(parts, "cuda", calls=500)
    best[f"rubiks_shift3d forward + backward (per layer of {CHAIN})"] /= CHAIN
    best[f"floor: an empty autograd.Function (per layer of {CHAIN})"] /= CHAIN
    for name, us in best.items():
        print(f"{name:<42} {us:8.1f} us")
    print("\nThe registered ops as compiled code calls them (torch.ops), against the backend:")
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            for name, us in best_us_per_call(_registered_calls(), "cuda", calls=500).items():
                print(f"{context.__name__:<15} {name:<40} {us:8.1f} us")
    print("\nThe inference ops, eager (no_grad), bound and through every check:")
    with torch.no_grad():
        for name, us in best_us_per_call(_inference_calls(), "cuda", calls=500).items():
            print(f"{name:<56} {us:8.1f} us")


def _registered_calls() -> dict:
    """Each inference-path op through ``torch.ops`` beside its backend's direct call."""
    x = torch.randn(1, 2, 4, 4, 4, device="cuda")
    shift = torch.rand(3, 4, device="cuda")
    scale, bias = torch.rand(4, device="cuda"), torch.rand(4, device="cuda")
    ops = torch.ops.rubiks_shift
    one, zero = [1, 1, 1], [0, 0, 0]
    return {
        "shift3d: torch.ops": lambda: ops.shift3d.default(x, shift, one, zero, False, True, 1.0),
        "shift3d: _cuda.forward": lambda: _cuda.forward(x, shift, one, zero, False),
        "affine_relu_shift3d: torch.ops": lambda: ops.affine_relu_shift3d.default(
            x, scale, bias, shift, one, zero, False
        ),
        "affine_relu_shift3d: _cuda.forward_affine": lambda: _cuda.forward_affine(
            x, scale, bias, shift, one, zero, False
        ),
        "affine_relu: torch.ops": lambda: ops.affine_relu.default(x, scale, bias),
        "affine_relu: _cuda.affine_relu": lambda: _cuda.affine_relu(x, scale, bias),
        "torch.empty_like (scale)": lambda: torch.empty_like(x),
    }


def _unbound(call):
    """``call`` with no signature bound: every check and plan lookup at every call."""

    def checked():
        fused._shift_key, fused._prologue_key = (lambda *a: None), (lambda *a: None)
        try:
            return call()
        finally:
            fused._shift_key, fused._prologue_key = shift_key, prologue_key

    shift_key, prologue_key = fused._shift_key, fused._prologue_key
    return checked


def _inference_calls() -> dict:
    """The fused model's two ops on a channel-major bfloat16 clip: the bound call against
    the checked path (its swap of two module attributes costs well under a µs)."""
    x = torch.randn(1, 2, 4, 4, 4, device="cuda", dtype=torch.bfloat16)
    x = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    shift = torch.rand(3, 4, device="cuda")
    scale, bias = torch.rand(4, device="cuda"), torch.rand(4, device="cuda")
    stride, padding = (1, 1, 1), (0, 0, 0)

    def shifted():
        return affine_relu_shift3d(x, scale, bias, shift, stride, padding)

    def prologue():
        return affine_relu(x, scale, bias)

    return {
        "affine_relu_shift3d, bound": shifted,
        "affine_relu_shift3d, checked": _unbound(shifted),
        "affine_relu, bound": prologue,
        "affine_relu, checked": _unbound(prologue),
    }


if __name__ == "__main__":
    main()
