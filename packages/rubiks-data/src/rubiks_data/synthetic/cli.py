"""``rubiks-synth OUT_DIR``: write the synthetic temporal dataset."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .generate import SynthConfig, generate
from .render import CLASSES


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    return w, h


def _frames(text: str) -> int | tuple[int, int]:
    try:
        if "-" in text or ":" in text:
            lo, hi = text.replace(":", "-").split("-")
            return int(lo), int(hi)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"frames must be N or MIN-MAX, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rubiks-synth",
        description="Generate synthetic videos whose class is the direction of a change in "
        "time (reversing a clip swaps its label), with SSv2-style JSON annotations.",
    )
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--num-train", type=int, default=480, help="training clips (default 480)")
    p.add_argument("--num-val", type=int, default=120, help="validation clips (default 120)")
    p.add_argument("--size", type=_size, default=(64, 64), help="N or WxH, even (default 64)")
    p.add_argument("--frames", type=_frames, default=16, help="frames per clip: N or MIN-MAX (16)")
    p.add_argument("--fps", type=int, default=12, help="frame rate (default 12, as SSv2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--format", choices=["webm", "mp4"], default="webm", help="VP9 webm or H.264 mp4"
    )
    p.add_argument("--frame-folders", action="store_true", help="also write frames + TSM lists")
    p.add_argument(
        "--classes",
        help="comma-separated subset of: " + ",".join(c.name for c in CLASSES),
    )
    p.add_argument("--crf", type=int, default=20, help="encoder quality (lower = better)")
    p.add_argument("-j", "--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--overwrite", action="store_true", help="replace a dataset with other settings")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _check_out_dir(parser: argparse.ArgumentParser, out: Path, overwrite: bool) -> None:
    """A new folder, a synthetic dataset's folder, or (with --overwrite) any folder."""
    if out.exists() and not out.is_dir():
        parser.error(f"{out} exists and is not a folder")
    foreign = out.is_dir() and not (out / "config.json").is_file() and any(out.iterdir())
    if foreign and not overwrite:
        parser.error(
            f"{out} is a non-empty folder that holds no synthetic dataset; choose an "
            "empty or new folder (or --overwrite to write the dataset's files into it)"
        )
    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        parser.error(f"cannot write under {parent}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    _check_out_dir(parser, Path(args.out_dir).expanduser(), args.overwrite)
    try:
        config = SynthConfig(
            num_train=args.num_train,
            num_val=args.num_val,
            width=args.size[0],
            height=args.size[1],
            num_frames=args.frames,
            fps=args.fps,
            seed=args.seed,
            format=args.format,
            frame_folders=args.frame_folders,
            classes=tuple(args.classes.split(",")) if args.classes else None,
            crf=args.crf,
        )
        start = time.perf_counter()
        out = generate(
            Path(args.out_dir).expanduser(),
            config,
            workers=args.workers,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as err:
        print(f"rubiks-synth: error: {err}", file=sys.stderr)
        return 2
    n = config.num_train + config.num_val
    seconds = time.perf_counter() - start
    print(f"{n} clips ({len(config.class_defs())} classes) in {out} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
