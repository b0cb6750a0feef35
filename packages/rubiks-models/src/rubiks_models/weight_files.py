"""Where the released weight files of the pretrained tags are found on disk.

The folder is ``$RUBIKSNET_WEIGHTS`` (default ``~/.cache/rubiksnet``), read at each lookup.
A tag's file is looked up when its model is created (:func:`with_local_weights`); the one
lookup at import is :func:`released_cfg_fields`, because timm decides which tags
``timm.list_pretrained()`` lists from the cfgs registered at import.
"""

import os
from pathlib import Path
from typing import Any

from timm.models import resolve_pretrained_cfg

from .archs import TIERS

__all__ = [
    "RELEASED_FILES",
    "local_weight_file",
    "released_cfg_fields",
    "require_weight_file",
    "weights_dir",
    "with_local_weights",
]

# Released checkpoint files (users own them): timm tag -> file name.
RELEASED_FILES: dict[str, str] = {
    **{f"rubiksnet_{t}.ssv2": f"ssv2_{t}.pth.tar" for t in TIERS},
    **{f"rubiksnet_{t}.kinetics": f"kinetics_{t}.pth.tar" for t in TIERS},
    "rubiksnet_large_aq.ssv2_budget0125": "ssv2_large_aq_budget0.125.pth.tar",
}


def weights_dir() -> Path:
    """Where pretrained tags look for weight files: ``$RUBIKSNET_WEIGHTS`` or
    ``~/.cache/rubiksnet``. Put the released ``.pth.tar`` files there (or their
    ``rubiks-convert`` output as ``<stem>.safetensors`` or ``<stem>/model.safetensors``)."""
    return Path(os.environ.get("RUBIKSNET_WEIGHTS", "~/.cache/rubiksnet")).expanduser()


def local_weight_file(tag_name: str) -> Path | None:
    """The local weight file for a pretrained tag, or None when it is not there."""
    name = RELEASED_FILES.get(tag_name)
    if name is None:
        return None
    root = weights_dir()
    stem = name.removesuffix(".pth.tar")
    for candidate in (root / name, root / f"{stem}.safetensors", root / stem / "model.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def require_weight_file(tag_name: str) -> Path:
    """The local weight file of a released tag; a FileNotFoundError naming the file, the
    folder searched and the ``rubiks-convert`` command whose output it would find."""
    path = local_weight_file(tag_name)
    if path is not None:
        return path
    released = RELEASED_FILES[tag_name]
    stem, root = released.removesuffix(".pth.tar"), weights_dir()
    raise FileNotFoundError(
        f"{tag_name}: weights not found. Put the released {released} in {root} (or a "
        f"converted copy: `rubiks-convert {released} {root / stem}` writes "
        f"{root / stem / 'model.safetensors'}); $RUBIKSNET_WEIGHTS sets the folder"
    )


def released_cfg_fields(tag_name: str) -> dict[str, Any]:
    """``file`` and ``notes`` of a released tag's pretrained cfg; ``file`` is set only when
    the file is present now, so ``timm.list_pretrained()`` lists the weights found at import."""
    path = local_weight_file(tag_name)
    name = RELEASED_FILES[tag_name]
    notes = (f"released file {name}; place it in $RUBIKSNET_WEIGHTS (default ~/.cache/rubiksnet)",)
    return {"file": str(path) if path else None, "notes": notes}


def with_local_weights(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` whose pretrained cfg names a weight file: one given by the caller, or the
    released file of the tag as found in :func:`weights_dir` now (files put there after
    import count); otherwise a FileNotFoundError that says where the file should be."""
    cfg = resolve_pretrained_cfg(
        name,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if cfg.file or cfg.url or cfg.hf_hub_id or cfg.state_dict:
        return kwargs
    tag_name = f"{name}.{cfg.tag}" if cfg.tag else name
    if tag_name not in RELEASED_FILES:
        raise FileNotFoundError(
            f"{tag_name}: no weight file is configured; pass "
            "pretrained_cfg_overlay=dict(file=...) with a checkpoint path"
        )
    try:
        path = require_weight_file(tag_name)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc}, pretrained_cfg_overlay=dict(file=...) names a file directly"
        ) from None
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    overlay["file"] = str(path)
    return {**kwargs, "pretrained_cfg_overlay": overlay}
