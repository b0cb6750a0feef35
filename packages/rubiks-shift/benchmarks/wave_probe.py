"""Does the frame walk's partial last wave cost it time? Forward over channel counts.

Times the forward at (8, 8, C, 56, 56) float32 for several C (the network's stage-1
width is 72) and prints, per C: ms, ms per channel, the waves of resident threads its
tasks fill (frame-walk tasks / (resident blocks x threads per block)), and the fraction
of a same-size copy. If the time grows in steps at whole waves rather than with C, the
tail of the last wave is what keeps C = 72 (1.67 waves) from the copy speed.

    python benchmarks/wave_probe.py [--channels 48 64 72 80 86 96 128]
"""

from __future__ import annotations

import argparse

import torch
from bench_shift import _gpu_time, same_size_bandwidth  # this folder (run as a script)

from rubiks_shift import _cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[48, 64, 72, 80, 86, 96, 128])
    args = parser.parse_args()
    device = torch.cuda.current_device()
    print(f"# {torch.cuda.get_device_name()}, forward (8, 8, C, 56, 56) float32, stride 1")
    print("C | ms | per channel | waves | % of same-size copy")
    for channels in args.channels:
        shape = (8, 8, channels, 56, 56)
        g = torch.Generator(device="cuda").manual_seed(0)
        xs = [torch.randn(shape, device="cuda", generator=g) for _ in range(3)]
        shift = (torch.rand(3, channels, device="cuda", generator=g) * 4 - 2).contiguous()
        ms, _ = _gpu_time(
            [lambda x=x, s=shift: _cuda.forward(x, s, (1, 1, 1), (0, 0, 0), False) for x in xs], 20
        )
        (step,) = _cuda._gather_plan(shape, shape, (1, 1, 1), (0, 0, 0), False, False)
        kernels = _cuda._kernels("float32", "float32")
        handle, _ = _cuda._Launcher.function(
            getattr(kernels, step.name), getattr(kernels, step.name + "_sig"), device
        )
        resident = _cuda._resident_blocks(handle, step.block[0], device) * step.block[0]
        waves = step.scalars[0] / resident
        nbytes = 2 * xs[0].numel() * 4
        floor_ms = nbytes / same_size_bandwidth("cuda", _gpu_time, 20, nbytes // 2) * 1e3
        print(
            f"{channels} | {ms:.4f} | {ms / channels * 1e3:.3f} us | {waves:.2f} | "
            f"{100 * floor_ms / ms:.1f}%"
        )


if __name__ == "__main__":
    main()
