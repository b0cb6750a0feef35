"""The bn1 pass on the CPU: ``affine_relu`` (its Numba kernel) against torch's
``addcmul`` + ReLU, which computes the same values, and a copy of the clip; with a frame
shift (a hardened AQ block's: each channel moved -1, 0 or +1 frames), against the same
values from ``affine_relu_shift3d`` with that temporal shift, quantized.

    python packages/rubiks-shift/benchmarks/bench_prologue_cpu.py [--batch 1 --frames 8]
        [--sizes 224 112] [--rounds 5] [--json OUT.json]

For the planes RubiksNet-Large's blocks read at each input size (channels, H = W), in
the layout the fused form stores them in (channel-major from 28 x 28 down, else
(N, T, C, H, W)), float32 under ``torch.inference_mode``: µs per call, eager and back to
back (host time included), the median over ``--rounds`` interleaved rounds of each
round's median call.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_shift import single_call_us, write_json  # this folder (a script)

from rubiks_shift import affine_relu, affine_relu_shift3d

# (channels, stride of the input's side): the planes RubiksNet-Large's blocks read
STAGES = [(72, 4), (144, 8), (288, 16), (576, 32)]
CHANNEL_MAJOR_PLANE = 28 * 28  # the fused form's default layout switch
CALLS = 50


def _clip(batch: int, frames: int, channels: int, side: int) -> torch.Tensor:
    x = torch.randn(batch, frames, channels, side, side)
    if side * side > CHANNEL_MAJOR_PLANE:
        return x
    return x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)


def _forms(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    c = x.shape[2]
    scale, bias = torch.rand(c) * 2 - 0.5, torch.randn(c) * 0.5
    view = (1, 1, -1, 1, 1)

    def torch_form() -> torch.Tensor:
        out = torch.empty_like(x)  # keeps x's layout
        return torch.addcmul(bias.view(view), x, scale.view(view), out=out).relu_()

    frames = torch.arange(c, dtype=torch.int32) % 3 - 1
    temporal = torch.zeros(3, c)
    temporal[0] = frames.float()
    return {
        "affine_relu": lambda: affine_relu(x, scale, bias),
        "addcmul + relu_": torch_form,
        "framed": lambda: affine_relu(x, scale, bias, frames),
        "framed as shift3d": lambda: affine_relu_shift3d(x, scale, bias, temporal, quantize=True),
        "copy": x.clone,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, µs per call")
    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            for channels, step in STAGES:
                side = -(-size // step)
                x = _clip(args.batch, args.frames, channels, side)
                forms = _forms(x)
                for fn in forms.values():  # compiles or loads the kernel; warms the caches
                    fn()
                us = single_call_us(forms, args.rounds, CALLS)
                layout = "channel-major" if side * side <= CHANNEL_MAJOR_PLANE else "contiguous"
                row = {"size": size, "shape": list(x.shape), "layout": layout, "us": us}
                rows.append(row)
                print(
                    f"{size}: {tuple(x.shape)} {layout:<13} "
                    + "  ".join(f"{name} {v:8.1f}" for name, v in us.items())
                    + f"  ({us['addcmul + relu_'] / us['affine_relu']:.2f}x,"
                    + f" framed {us['framed as shift3d'] / us['framed']:.2f}x)"
                )
    if args.json:
        write_json(args.json, {"threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
