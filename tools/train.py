#!/usr/bin/env python
"""Train or fine-tune RubiksNet: ``python tools/train.py --help``.

A thin entry point over :mod:`rubiks_eval.training` (TSM recipe scaled to the batch,
rubiks-models' optimizer groups, AMP, per-epoch 1-clip validation, atomic resumable
checkpoints, JSONL logs). Re-running the same command resumes from ``--output``.

Examples::

    python tools/train.py synthetic --root-path ~/.cache/rubiksnet/synthetic \\
        --arch rubiksnet_tiny --input-size 64 --epochs 12 -b 16 --schedule cosine
    python tools/train.py ssv2 --root-path data/ssv2 --arch rubiksnet_large -b 64 --amp
    python tools/train.py hmdb51 --train-list train.txt --val-list val.txt --root-path frames/ \\
        --pretrained kinetics_tiny.safetensors --lr 0.001 --epochs 10
"""

from __future__ import annotations

import sys
from pathlib import Path


def _use_checkout_sources() -> None:
    # allow running from a fresh clone without installing the packages
    root = Path(__file__).resolve().parents[1]
    for src in sorted((root / "packages").glob("*/src")):
        if str(src) not in sys.path:
            sys.path.append(str(src))


if __name__ == "__main__":
    try:
        import rubiks_eval.training  # noqa: F401
    except ImportError:
        _use_checkout_sources()
    from rubiks_eval.training import main

    sys.exit(main())
