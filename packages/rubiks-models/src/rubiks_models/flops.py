"""Multiply-add (MAC) counting for RubiksNet, in the convention of the paper's README.

The paper reports "FLOPs" as multiply-adds per clip (TSM's convention: TSM-ResNet50 8f =
33G). PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode` counts convolutions and
matmuls (2 FLOPs per MAC) but cannot see the RubiksShift custom op; importing this module
registers a formula for ``torch.ops.rubiks_shift.shift3d`` with it.

Convention (reproduces the README's 3.9 / 6.8 / 11.2 / 15.8 G for tiny/small/medium/large
and 15.7 G for Large-AQ at 8x224^2 within 1%):

* convolutions and linear layers: their MACs (bias-free here, the head's bias ignored);
* RubiksShift, per output element: 8 for the interpolated 3-D shift (trilinear), 4 when
  the input has one frame or for the 2-D shift (bilinear), 0 with ``quantize=True``
  (a pure gather);
* 1 per BatchNorm output element (folded scale and shift) and 1 per ReLU output element;
* 3 per output element of the AQ temporal attention layer (3 taps), 0 once hardened;
* not counted: residual additions, global pooling, the squeeze-excitation scaling and
  sigmoid, softmax of the attention logits, the temporal mean of the logits.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from .rubiksnet import RubiksNet, TemporalAttentionShift

__all__ = ["MacReport", "count_macs", "main", "shift_macs"]

README_GMACS = {
    "rubiksnet_tiny": 3.9,
    "rubiksnet_small": 6.8,
    "rubiksnet_medium": 11.2,
    "rubiksnet_large": 15.8,
    "rubiksnet_large_aq": 15.7,
}


def shift_macs(x_shape: Sequence[int], out_shape: Sequence[int], quantize: bool) -> int:
    """MACs of one ``rubiks_shift.shift3d`` call under the convention above."""
    if quantize:
        return 0
    corners = 4 if x_shape[1] == 1 else 8
    return corners * math.prod(out_shape)


def _shift3d_flops(
    x_shape, shift_shape, stride, padding, quantize, normalize_grad, t_factor, out_shape=None
) -> int:
    return 2 * shift_macs(x_shape, out_shape, bool(quantize))  # FLOPs = 2 x MACs


if torch.ops.rubiks_shift.shift3d not in flop_registry:
    register_flop_formula(torch.ops.rubiks_shift.shift3d)(_shift3d_flops)


@dataclass
class MacReport:
    """Multiply-adds of one forward pass, by kind, and the parameter count."""

    conv_linear: int = 0
    shift: int = 0
    elementwise: int = 0
    params: int = 0
    input_shape: tuple[int, ...] = ()
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.conv_linear + self.shift + self.elementwise


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 8, 3, 224, 224)) -> MacReport:
    """Count ``model``'s multiply-adds for one input of ``input_shape`` (eval mode, no grad).
    ``model``: a :class:`RubiksNet` (count a fused model's source before ``fuse_model``:
    its fused passes are not the operations this convention counts)."""
    if not isinstance(model, RubiksNet):
        raise TypeError(
            f"count_macs counts a RubiksNet, got {type(model).__name__} "
            "(a fused model: count the RubiksNet it was made from)"
        )
    counts = {"batchnorm": 0, "relu": 0, "temporal_attention": 0}

    def hook(module: nn.Module, _inp, out: torch.Tensor) -> None:
        if isinstance(module, nn.BatchNorm2d):
            counts["batchnorm"] += out.numel()
        elif isinstance(module, nn.ReLU):
            counts["relu"] += out.numel()
        elif isinstance(module, TemporalAttentionShift):
            counts["temporal_attention"] += 3 * out.numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.BatchNorm2d, nn.ReLU, TemporalAttentionShift))
    ]
    was_training = model.training
    model.eval()
    ref = next(model.parameters())
    x = torch.zeros(*input_shape, device=ref.device, dtype=ref.dtype)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_op = counter.get_flop_counts()["Global"]
    shift = sum(v for k, v in per_op.items() if "rubiks_shift" in str(k)) // 2
    conv_linear = counter.get_total_flops() // 2 - shift
    return MacReport(
        conv_linear=conv_linear,
        shift=shift,
        elementwise=sum(counts.values()),
        params=sum(p.numel() for p in model.parameters()),
        input_shape=tuple(input_shape),
        by_kind={"conv_linear": conv_linear, "shift": shift, **counts},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``rubiks-flops [NAME ...] [--frames 8] [--size 224] [--num-classes 174]``."""
    p = argparse.ArgumentParser(
        prog="rubiks-flops",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Convention") :],  # what the table's header points to
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", default=list(README_GMACS), help="timm model names")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=174)
    p.add_argument("--quantized", action="store_true", help="count the deployment export")
    args = p.parse_args(argv)
    import timm

    known = timm.list_models("rubiksnet*")
    unknown = [n for n in args.names if n not in known]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; choose from {', '.join(known)}")
    if args.frames < 1 or args.size < 32 or args.num_classes < 1:
        p.error(
            f"--frames and --num-classes must be >= 1 and --size >= 32, got {args.frames}, "
            f"{args.num_classes} and {args.size}"
        )
    print(
        f"multiply-adds per {args.frames}x{args.size}^2 clip (convention: python -m "
        "rubiks_models.flops --help / module docstring)"
    )
    header = (
        f"{'model':<22}{'params':>12}{'conv+fc G':>11}{'shift G':>9}{'elem G':>8}{'total G':>9}"
    )
    print(header + f"{'README':>8}")
    for name in args.names:
        model: RubiksNet = timm.create_model(name, num_classes=args.num_classes)
        if args.quantized:
            from .deploy import quantize_model

            model = quantize_model(model)
        r = count_macs(model, (1, args.frames, 3, args.size, args.size))
        readme = README_GMACS.get(name) if (args.frames, args.size) == (8, 224) else None
        ref = f"{readme:>8.1f}" if readme and not args.quantized else f"{'':>8}"
        print(
            f"{name:<22}{r.params:>12,}{r.conv_linear / 1e9:>11.3f}{r.shift / 1e9:>9.3f}"
            f"{r.elementwise / 1e9:>8.3f}{r.total / 1e9:>9.3f}{ref}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
