"""Deployment export: a trained RubiksNet with zero-multiply shifts.

Every RubiksShift is rounded to integers (``floor(s + 0.5)``, the op's rounding) and run
with ``quantize=True`` (a gather); every AQ temporal attention layer becomes a hard integer
temporal shift of -1, 0 or +1 (its strongest tap). :func:`export_deploy` reports how much
the logits move on a given input, the accuracy-relevant cost of hardening.

``rubiks-export CHECKPOINT [--output OUT.safetensors] [--input clip.safetensors]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

from .rubiksnet import RubiksNet, TemporalAttentionShift, checkpoint_filter_fn

__all__ = ["export_deploy", "main", "quantize_model"]


@torch.no_grad()
def quantize_model(model: RubiksNet) -> RubiksNet:
    """The deployment form of ``model`` (a new model; ``model`` is left as it is)."""
    ref = model.stem.weight
    deployed = RubiksNet(
        model.tier,
        model.num_classes,
        model.num_frames,
        model.variant,
        **model.build_args(),
        deploy=True,
    ).to(device=ref.device, dtype=ref.dtype)
    state = checkpoint_filter_fn(model.state_dict(), deployed)
    for k, v in state.items():
        if k.endswith("rubiks.shift"):
            state[k] = torch.floor(v + 0.5)
    deployed.load_state_dict(state, strict=True)
    return deployed.train(model.training)


@torch.no_grad()
def export_deploy(model: RubiksNet, x: torch.Tensor) -> tuple[RubiksNet, dict[str, Any]]:
    """(deployment model, report) with the logit change on the input ``x``.

    The report has ``max_abs_logit_diff``, ``max_rel_logit_diff`` (relative to the largest
    logit magnitude), ``top1_agreement`` (fraction of samples whose argmax is unchanged),
    ``shifts_moved`` (fraction of shift values that rounding changed by more than 0.25)
    and, for AQ models, ``aq_shifted_fraction`` (channels with a non-zero temporal shift).
    """
    was_training = model.training
    model.eval()
    deployed = quantize_model(model).eval()
    before = model(x).float()
    after = deployed(x).float()
    model.train(was_training)
    shifts = [p for n, p in model.named_parameters() if n.endswith("rubiks.shift")]
    flat = torch.cat([p.detach().flatten() for p in shifts])
    report: dict[str, Any] = {
        "max_abs_logit_diff": float((after - before).abs().max()),
        "max_rel_logit_diff": float((after - before).abs().max() / before.abs().max()),
        "top1_agreement": float((after.argmax(1) == before.argmax(1)).float().mean()),
        "shifts_moved": float(((torch.floor(flat + 0.5) - flat).abs() > 0.25).float().mean()),
    }
    taps = [m for m in model.modules() if isinstance(m, TemporalAttentionShift)]
    if taps:
        shifted = torch.cat([m.weight.argmax(1) != 1 for m in taps])
        report["aq_shifted_fraction"] = float(shifted.float().mean())
    return deployed, report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rubiks-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help=".pth.tar, .safetensors or rubiks-convert directory")
    p.add_argument("--input", help="safetensors file with a clip tensor 'video' (B,T,3,H,W)")
    p.add_argument("--frames", type=int, default=8, help="random clip frames (no --input)")
    p.add_argument("--size", type=int, default=112, help="random clip side (no --input)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the deployment weights here (safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)
    from pathlib import Path

    from .weights import CheckpointError, load_model, save_weights

    checkpoint = Path(args.checkpoint).expanduser()
    if not checkpoint.exists():
        p.error(f"{checkpoint}: no such checkpoint file or folder")
    if args.frames < 1 or args.size < 32:
        p.error(f"--frames must be >= 1 and --size >= 32, got {args.frames} and {args.size}")
    if args.input and not Path(args.input).expanduser().is_file():
        p.error(f"--input {args.input}: no such file")
    if args.output:
        out = Path(args.output).expanduser()
        inputs = [checkpoint] + ([Path(args.input).expanduser()] if args.input else [])

        def within(path: Path, folder: Path) -> bool:
            return path == folder or folder in path.parents

        target = out.resolve()
        if any(within(target, i.resolve()) or within(i.resolve(), target) for i in inputs):
            p.error(f"--output {out} would replace an input of this run (or a file in one)")
        if out.is_dir() or out.suffix.lower() != ".safetensors":
            p.error(f"--output {out}: name a .safetensors file")
        if out.exists() and not args.overwrite:
            p.error(f"--output {out} exists; pass --overwrite to replace it")
    try:
        model = load_model(checkpoint)
        if args.input:
            x = _read_clip(Path(args.input).expanduser())
        else:
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randn(2, args.frames, 3, args.size, args.size, generator=g)
        deployed, report = export_deploy(model, x)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"rubiks-export: error: {exc}", file=sys.stderr)
        return 2
    for k, v in report.items():
        print(f"{k}: {v:.6g}")
    if args.output:
        save_weights(deployed, args.output, {"deploy": "true"})
        print(f"wrote {args.output} (load with RubiksNet(..., deploy=True))")
    return 0


def _read_clip(path) -> torch.Tensor:
    """The 'video' tensor (B, T, 3, H, W) of a safetensors file; ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"--input {path}: not a readable safetensors file ({exc})") from exc
    x = tensors.get("video")
    if x is None or x.dim() != 5 or x.shape[2] != 3 or not x.is_floating_point():
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ValueError(
            f"--input {path}: needs a float tensor 'video' (B, T, 3, H, W); has {found}"
        )
    return x.float()


if __name__ == "__main__":
    sys.exit(main())
