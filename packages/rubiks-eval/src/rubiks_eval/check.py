"""Installation check: build a RubiksNet, classify a random clip, print the prediction.

``python -m rubiks_eval.check [--arch rubiksnet_tiny] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; exit status 0 on success."""
    p = argparse.ArgumentParser(prog="python -m rubiks_eval.check", description=__doc__)
    p.add_argument("--arch", default="rubiksnet_tiny", help="timm model name")
    p.add_argument("--num-classes", type=int, default=174)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="frame side")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = p.parse_args(argv)

    import rubiks_models  # noqa: F401  (registers the RubiksNet architectures with timm)
    import timm

    from .argcheck import device_error
    from .distributed import resolve_device

    error = device_error(args.device)
    if error is None and args.arch not in timm.list_models("rubiksnet*"):
        error = f"--arch {args.arch!r} is not a RubiksNet; one of {timm.list_models('rubiksnet*')}"
    if error is None and (args.num_classes < 1 or args.num_frames < 1 or args.size < 32):
        error = "--num-classes and --num-frames must be >= 1 and --size >= 32"
    if error:
        p.error(error)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}")
    model = timm.create_model(args.arch, num_classes=args.num_classes, num_frames=args.num_frames)
    model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    clip = torch.rand(1, args.num_frames, 3, args.size, args.size, device=device)
    with torch.no_grad():
        tic = time.perf_counter()
        logits = model(clip)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - tic) * 1e3
    if logits.shape != (1, args.num_classes) or not torch.isfinite(logits).all():
        print(f"FAILED: unexpected output {tuple(logits.shape)} / non-finite logits")
        return 1
    prob, cls = logits.float().softmax(dim=1).max(dim=1)
    print(
        f"{args.arch}: {n_params:,} parameters; random clip {tuple(clip.shape)} -> class "
        f"{int(cls)} (p={float(prob):.3f}) in {ms:.0f} ms"
    )
    print("Installation successful")
    return 0


if __name__ == "__main__":
    sys.exit(main())
