"""Reading, checking and writing RubiksNet weights.

Accepted inputs: a released reference ``.pth.tar`` (``torch.save`` dict with ``tier``,
``num_classes``, ``num_frames``, ``variant`` and ``model``), a project ``.safetensors`` file
(metadata ``arch``/``tier``/``variant``/``num_classes``/``num_frames``, keys in either layout)
or a ``rubiks-convert`` output directory (``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rubiks_shift import check_shift

from .rubiksnet import (
    TIERS,
    VARIANTS,
    RubiksNet,
    checkpoint_filter_fn,
    is_reference_layout,
    unwrap_state_dict,
)

__all__ = [
    "CheckpointError",
    "arch_name",
    "infer_arch",
    "load_model",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_weights",
    "validate_state_dict",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be a RubiksNet of the expected architecture."""


def arch_name(tier: str, variant: str) -> str:
    """The timm name of a tier/variant: ``rubiksnet_large``, ``rubiksnet_large_aq``, ..."""
    if variant == "rubiks2d":
        return f"rubiksnet2d_{tier}"
    return f"rubiksnet_{tier}" + ("_aq" if variant == "rubiks3d-aq" else "")


def _meta_value(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict in its stored layout, metadata) of a checkpoint file or directory.

    Raises :class:`CheckpointError` naming the problem for unreadable or truncated files.
    """
    path = Path(path).expanduser()
    meta: dict[str, Any] = {}
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            try:
                cfg = json.loads(config.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise CheckpointError(f"{config}: not a readable JSON config ({exc})") from exc
            if not isinstance(cfg, dict) or not isinstance(cfg.get("rubiksnet", {}), dict):
                raise CheckpointError(f"{config}: expected a JSON object with a 'rubiksnet' entry")
            meta.update(cfg.get("rubiksnet", {}))
            meta.setdefault("arch", cfg.get("architecture"))
            meta.setdefault("num_classes", cfg.get("num_classes"))
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta = {**{k: _meta_value(v) for k, v in (fh.metadata() or {}).items()}, **meta}
                state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
        return state, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise CheckpointError(
            f"{path}: cannot read as a torch checkpoint (truncated or not a checkpoint?): {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    meta.update({k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))})
    try:
        state = unwrap_state_dict(obj)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor")
    return state, meta


def infer_arch(state: dict[str, torch.Tensor]) -> tuple[str, str, int]:
    """(tier, variant, num_classes) from the tensors of a state dict (either layout)."""
    try:
        ours = checkpoint_filter_fn(state) if is_reference_layout(state) else state
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    if "stem.weight" not in ours:
        raise CheckpointError("missing key 'stem.weight' (reference: 'backbone.conv1.weight')")
    width = int(ours["stem.weight"].shape[0])
    has_se = any(".se." in k for k in ours)
    counts = []
    for s in range(1, 5):
        blocks = {k.split(".")[3] for k in ours if k.startswith(f"stages.{s}.blocks.")}
        counts.append(len(blocks))
    tier = None
    for name, (w, repeats, se) in TIERS.items():
        if w == width and tuple(counts) == repeats and bool(se) == has_se:
            tier = name
    if tier is None:
        raise CheckpointError(f"no RubiksNet tier has width {width}, blocks {counts}, SE {has_se}")
    shift = ours.get("stages.0.blocks.0.rubiks.shift")
    if shift is None:
        raise CheckpointError(
            "missing key 'stages.0.blocks.0.rubiks.shift' "
            "(reference: 'backbone.layer0.0.as3.rubiks3d.shift' or '...as3.shift')"
        )
    if any(k.endswith(("tshift.weight", "tshift.shift")) for k in ours):
        variant = "rubiks3d-aq"
    else:
        variant = "rubiks3d" if shift.shape[0] == 3 else "rubiks2d"
    fc = ours.get("fc.weight")
    return tier, variant, int(fc.shape[0]) if fc is not None else 0


def validate_state_dict(
    state: dict[str, torch.Tensor],
    model: RubiksNet,
    *,
    new_head: bool = False,
    adapt_in_chans: bool = False,
) -> dict:
    """``state`` converted to ``model``'s keys, every key, shape and shift value checked.

    Raises :class:`CheckpointError` naming the first unexpected, missing or mis-shaped key,
    or a shift with non-finite values. ``new_head``: the classifier (``fc.*``) is to be
    replaced, so its keys may be absent or of another shape (every other key is checked).
    ``adapt_in_chans``: the stem may have another number of input channels (timm's
    ``in_chans`` adaptation follows).
    """
    try:
        converted = checkpoint_filter_fn(state, model)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    own = model.state_dict()
    for k in converted:
        if k not in own and not (new_head and k.startswith("fc.")):
            raise CheckpointError(
                f"unexpected key {k!r} for {arch_name(model.tier, model.variant)}"
            )
    for k, v in own.items():
        if new_head and k.startswith("fc."):
            continue
        if k not in converted:
            raise CheckpointError(f"missing key {k!r} (truncated or another architecture?)")
        shape = tuple(converted[k].shape)
        if (
            adapt_in_chans
            and k == "stem.weight"
            and shape[:1] + shape[2:] == v.shape[:1] + v.shape[2:]
        ):
            continue  # timm converts the input channels of the stem after this check
        if shape != tuple(v.shape):
            raise CheckpointError(
                f"key {k!r} has shape {tuple(converted[k].shape)}, expected {tuple(v.shape)}"
            )
        if k.endswith("rubiks.shift"):
            try:
                check_shift(converted[k])
            except ValueError as exc:
                raise CheckpointError(f"key {k!r}: {exc}") from exc
    return converted


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    """An integer metadata value (``4`` or ``"4"``), None when absent; else CheckpointError."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"metadata {key!r} is {value!r}, not a non-negative integer")
    return value


def _resolve(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[str, str, int, int]:
    tier, variant, classes = infer_arch(state)
    meta_classes, frames = _meta_int(meta, "num_classes"), _meta_int(meta, "num_frames")
    if meta.get("tier") not in (None, tier):
        raise CheckpointError(f"metadata 'tier' is {meta['tier']!r} but the tensors are {tier!r}")
    if meta.get("variant") not in (None, variant):
        raise CheckpointError(
            f"metadata 'variant' is {meta['variant']!r} but the tensors are {variant!r}"
        )
    if meta_classes not in (None, classes):
        raise CheckpointError(
            f"metadata 'num_classes' is {meta_classes} but the head has {classes}"
        )
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}")
    return tier, variant, classes, frames or 8


def resolve_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], tuple[str, str, int, int]]:
    """(state, metadata, (tier, variant, num_classes, num_frames)) of a checkpoint file or
    folder; every error (:class:`CheckpointError`, FileNotFoundError) names ``path``."""
    state, meta = read_checkpoint(path)
    try:
        return state, meta, _resolve(meta, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{Path(path).expanduser()}: {exc}") from exc


def load_model(path: str | os.PathLike, num_classes: int | None = None, **kwargs: Any) -> RubiksNet:
    """A :class:`RubiksNet` built from a checkpoint's metadata/tensors and loaded strictly.

    A ``num_classes`` different from the checkpoint's gets a fresh head (fine-tuning:
    asked for explicitly). Other keyword arguments go to the model (e.g. ``drop_rate``).
    Every error names the file.
    """
    state, meta, (tier, variant, classes, frames) = resolve_checkpoint(path)
    if meta.get("deploy") in (True, "true"):
        kwargs.setdefault("deploy", True)
    model = RubiksNet(tier, classes, kwargs.pop("num_frames", frames), variant, **kwargs)
    try:
        converted = validate_state_dict(state, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{Path(path).expanduser()}: {exc}") from exc
    model.load_state_dict(converted, strict=True)
    if num_classes is not None and num_classes != classes:
        model.reset_classifier(num_classes)
    return model


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(
    model: RubiksNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s state dict as safetensors (atomically) with its architecture in the
    metadata, so :func:`load_model` and ``timm.create_model(..., pretrained_cfg_overlay=
    dict(file=path))`` can read it back."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": "pt",
        "arch": arch_name(model.tier, model.variant),
        "tier": model.tier,
        "variant": model.variant,
        "num_classes": str(model.num_classes),
        "num_frames": str(model.num_frames),
    }
    if getattr(model, "deploy", False):  # quantized form: load_model must rebuild it so
        meta["deploy"] = "true"
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path
