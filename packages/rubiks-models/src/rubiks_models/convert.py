"""``rubiks-convert IN.pth.tar OUT_DIR``: a released RubiksNet checkpoint as safetensors.

Writes ``OUT_DIR/model.safetensors`` (this package's key layout, architecture in the
metadata) and ``OUT_DIR/config.json`` (timm's format), so that
``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` loads it. Both files are
written into a temporary folder beside ``OUT_DIR`` that is renamed into place, so
``OUT_DIR`` holds the complete pair or nothing. A non-empty existing ``OUT_DIR`` is
refused unless ``--overwrite``, and one that is or holds the input always. Wrong or
truncated inputs are refused with an error naming the file and the offending key;
nothing is written then.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_write
from .weights import (
    CheckpointError,
    arch_name,
    resolve_checkpoint,
    save_weights,
    validate_state_dict,
)

__all__ = ["check_output_dir", "convert", "main"]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(src: Path, out: Path, overwrite: bool) -> None:
    """Raise FileExistsError / ValueError unless ``out`` may receive the conversion of
    ``src``: a new or empty folder, or with ``overwrite`` any folder that is not and does
    not hold ``src``."""
    src, out = src.resolve(), out.resolve()
    if out == src or out in src.parents:
        raise ValueError(f"output {out} would replace the input {src}; choose another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")


def convert(src: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Convert ``src`` into the folder ``out_dir`` (written as one unit); returns the config.

    An existing non-empty ``out_dir`` is a FileExistsError unless ``overwrite``.
    """
    import timm

    from .rubiksnet import RubiksNet, saved_model_kwargs

    src = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such checkpoint file")
    check_output_dir(src, out, overwrite)
    state, meta, (tier, variant, classes, frames) = resolve_checkpoint(src)
    build = saved_model_kwargs(src, meta)  # a save_weights file's own architecture
    model = RubiksNet(tier, classes, frames, variant, **build)
    try:
        model.load_state_dict(validate_state_dict(state, model), strict=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{src}: {exc}") from exc
    arch = arch_name(tier, variant)
    cfg = dict(timm.models.get_pretrained_cfg(arch).to_dict(remove_source=True))
    cfg.update(num_classes=classes)
    cfg.pop("notes", None)
    config = {
        "architecture": arch,
        "num_classes": classes,
        "num_features": model.num_features,
        "pretrained_cfg": cfg,
        "model_args": {"num_frames": frames, **build},
        "rubiksnet": {"tier": tier, "variant": variant, "num_frames": frames},
    }
    text = json.dumps(config, indent=2, default=list) + "\n"
    digest = _sha256(src / "model.safetensors" if src.is_dir() else src)  # a converted folder

    def write(tmp: Path) -> None:
        save_weights(
            model, tmp / "model.safetensors", {"source_file": src.name, "source_sha256": digest}
        )
        atomic_write(tmp / "config.json", lambda name: Path(name).write_text(text))

    _atomic_write_dir(out, write, overwrite=overwrite)
    return config


def _atomic_write_dir(path: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Fill a temporary folder beside ``path`` with ``write(tmp)`` and rename it to
    ``path``; an existing ``path`` (with ``overwrite``) is moved aside first and removed
    once the new folder is in place. On error nothing at ``path`` changes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        write(tmp)
        tmp.chmod(0o777 & ~_umask())
        if path.exists():
            if any(path.iterdir()) and not overwrite:
                raise FileExistsError(f"output folder {path} exists; pass --overwrite")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old / path.name, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rubiks-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="reference .pth.tar (or a project .safetensors)")
    p.add_argument("out_dir", help="output folder (created; written as one unit)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    src, out = Path(args.src).expanduser(), Path(args.out_dir).expanduser()
    if not src.exists():
        p.error(f"{src}: no such checkpoint file")
    try:
        check_output_dir(src, out, args.overwrite)
    except (FileExistsError, ValueError) as exc:
        p.error(str(exc))
    try:
        config = convert(src, out, overwrite=args.overwrite)
    except (CheckpointError, OSError) as exc:
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
