"""``rubiks-convert IN.pth.tar OUT_DIR``: a released RubiksNet checkpoint as safetensors.

Writes ``OUT_DIR/model.safetensors`` (this package's key layout, architecture in the
metadata) and ``OUT_DIR/config.json`` (timm's format), so that
``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` loads it. Each file is written
to a temporary name and renamed. Wrong or truncated inputs are refused with an error
naming the offending key; nothing is written then.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .weights import (
    CheckpointError,
    _atomic_write,
    _resolve,
    arch_name,
    read_checkpoint,
    save_weights,
    validate_state_dict,
)

__all__ = ["convert", "main"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(src: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Convert ``src`` into ``out_dir``; returns the written config."""
    import timm

    from .rubiksnet import RubiksNet

    src = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    state, meta = read_checkpoint(src)
    tier, variant, classes, frames = _resolve(meta, state)
    model = RubiksNet(tier, classes, frames, variant)
    model.load_state_dict(validate_state_dict(state, model), strict=True)
    arch = arch_name(tier, variant)
    cfg = dict(timm.models.get_pretrained_cfg(arch).to_dict(remove_source=True))
    cfg.update(num_classes=classes)
    cfg.pop("notes", None)
    config = {
        "architecture": arch,
        "num_classes": classes,
        "num_features": model.num_features,
        "pretrained_cfg": cfg,
        "model_args": {"num_frames": frames},
        "rubiksnet": {"tier": tier, "variant": variant, "num_frames": frames},
    }
    save_weights(
        model,
        out / "model.safetensors",
        {"source_file": src.name, "source_sha256": _sha256(src)},
    )
    text = json.dumps(config, indent=2, default=list) + "\n"
    _atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(text))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rubiks-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="reference .pth.tar (or a project .safetensors)")
    p.add_argument("out_dir", help="output directory (created)")
    args = p.parse_args(argv)
    try:
        config = convert(args.src, args.out_dir)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"rubiks-convert: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.src} -> {args.out_dir}/model.safetensors + config.json "
        f"({config['architecture']}, {config['num_classes']} classes); load with "
        f"timm.create_model('local-dir:{args.out_dir}', pretrained=True)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
