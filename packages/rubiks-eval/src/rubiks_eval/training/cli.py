"""The ``tools/train.py`` / ``rubiks-train`` command line: options (one per
:class:`TrainConfig` field), their checks before any work, and :func:`main`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import TrainConfig
from .loop import train

__all__ = ["build_parser", "check_args", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``tools/train.py`` (one per :class:`TrainConfig` field)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train or fine-tune RubiksNet (TSM recipe; resumable, atomic checkpoints).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def number(flag: str, kind: type, text: str | None = None, *aliases: str) -> None:
        # a numeric option whose default is the TrainConfig field of the same name
        default = getattr(d, flag.lstrip("-").replace("-", "_"))
        p.add_argument(flag, *aliases, type=kind, default=default, help=text)

    p.add_argument(
        "dataset",
        nargs="?",
        default=d.dataset,
        help="dataset name (synthetic, dummy, ssv2, ssv1, kinetics, ucf101, hmdb51)",
    )
    p.add_argument("--output", "-o", default=d.output, help="run directory (logs, checkpoints)")
    p.add_argument("--root-path", default=None, help="videos / frame folders root")
    p.add_argument("--train-list", default=None, help="training list or annotation file")
    p.add_argument("--val-list", default=None, help="validation list or annotation file")
    p.add_argument("--labels-file", default=None, help="class names (e.g. SSv2 labels JSON)")
    number(
        "--dummy-videos",
        int,
        "videos of the 'dummy' dataset (random clips, for overfitting checks)",
    )
    number("--num-frames", int)
    number("--input-size", int, "crop size")
    number("--scale-size", int, "short side before cropping (default input_size * 256 / 224)")
    p.add_argument("--arch", default=d.arch, help="timm model name, e.g. rubiksnet_tiny")
    number("--num-classes", int, "default: from the dataset")
    p.add_argument(
        "--pretrained",
        default=None,
        help="initial weights: a checkpoint file (ours or a released .pth.tar) or a timm "
        "name.tag such as rubiksnet_tiny.kinetics; a head of another class count is "
        "replaced (fine-tuning)",
    )
    number("--dropout", float)
    number("--shift-lr-mult", float)
    p.add_argument(
        "--freeze-temporal-shift", action="store_true", help="ablation: temporal shifts fixed at 0"
    )
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute stage activations")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    number("--aq-budget", float, "AQ: allowed fraction of temporally shifted channels")
    number("--aq-penalty", float, "AQ: budget penalty weight per AQ channel (0 disables)")
    number("--aq-tau-start", float)
    number("--aq-tau-end", float)
    number("--epochs", int)
    number("--batch-size", int, "global batch (split over torchrun's processes)", "-b")
    number("--lr", float, "default 0.01 * batch_size / 64")
    number("--momentum", float)
    number("--weight-decay", float, None, "--wd")
    p.add_argument("--schedule", choices=["step", "cosine", "constant"], default=d.schedule)
    p.add_argument(
        "--lr-steps",
        type=float,
        nargs="*",
        default=d.lr_steps,
        help="step epochs (values < 1 are fractions of --epochs)",
    )
    number("--warmup-epochs", float)
    number("--clip-grad", float, "0 disables")
    number("--label-smoothing", float)
    p.add_argument("--amp", action="store_true", help="fp16 on CUDA, bf16 on CPU")
    number("--seed", int)
    number("--workers", int, None, "-j")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    number("--val-every", int, "epochs; 0 disables")
    number("--val-batch-size", int)
    number("--save-every-steps", int)
    number("--keep-checkpoints", int)
    number("--log-every", int)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="ignore an existing checkpoint in --output",
    )
    number("--max-steps", int, "stop after this many steps")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``argv`` into a :class:`TrainConfig`; impossible values are refused with
    ``parser.error`` (exit 2, one line) before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    ns = vars(args)
    if ns["clip_grad"] is not None and ns["clip_grad"] <= 0:
        ns["clip_grad"] = None
    return TrainConfig(**ns)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible values, unknown devices, missing list files and a file given as
    the run folder (``parser.error``) before any work."""
    from ..argcheck import crop_error, device_error

    minimum = {
        "epochs": 1,
        "batch_size": 1,
        "num_frames": 1,
        "input_size": 1,
        "scale_size": 1,
        "num_classes": 1,
        "dummy_videos": 1,
        "workers": 0,
        "val_every": 0,
        "val_batch_size": 1,
        "save_every_steps": 0,
        "keep_checkpoints": 1,
        "log_every": 1,
        "max_steps": 1,
    }
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    for name in ("lr", "aq_tau_start", "aq_tau_end"):
        value = getattr(args, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    for name in ("momentum", "weight_decay", "dropout", "label_smoothing", "aq_penalty"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if not 0 <= args.dropout < 1 or not 0 <= args.label_smoothing < 1:
        parser.error("--dropout and --label-smoothing must be in [0, 1)")
    if not 0 <= args.aq_budget <= 1:
        parser.error(f"--aq-budget must be a fraction in [0, 1], got {args.aq_budget}")
    if args.warmup_epochs < 0 or args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs must be in [0, --epochs], got {args.warmup_epochs}")
    error = crop_error("--input-size", args.input_size, args.scale_size, "validation crop")
    if error:
        parser.error(error)
    error = device_error(args.device)
    if error:
        parser.error(error)
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        parser.error(f"--output {out} is a file; it must be a run folder")
    for flag, path in (
        ("--train-list", args.train_list),
        ("--val-list", args.val_list),
        ("--labels-file", args.labels_file),
    ):
        if path and not Path(path).expanduser().is_file():
            parser.error(f"{flag} {path}: no such file")
    dataset = args.dataset.lower()
    for flag, path in (("--train-list", args.train_list), ("--val-list", args.val_list)):
        if path and dataset in ("dummy", "random"):
            parser.error(f"{flag}: dataset {args.dataset!r} draws random clips, it reads no list")
        if path and dataset == "synthetic" and not path.endswith(".json"):
            parser.error(
                f"{flag} {path}: dataset 'synthetic' reads its folder's JSON annotations; "
                "name the dataset a list of frame folders belongs to (ssv1, kinetics, "
                "ucf101, hmdb51, ssv2)"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/train.py`` and ``rubiks-train``."""
    cfg = config_from_args(argv)
    try:
        summary = train(cfg)
    except (OSError, ValueError, KeyError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # one summary per run, not one per process
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0
