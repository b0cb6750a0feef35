"""Reading and checking RubiksNet checkpoints, and the strict loading of a pretrained file
through timm. Nothing here needs the model class: the key conversion is passed in as the
model file's ``checkpoint_filter_fn``, as timm's builder takes it.

Accepted inputs: a released reference ``.pth.tar`` (``torch.save`` dict with ``tier``,
``num_classes``, ``num_frames``, ``variant`` and ``model``), a project ``.safetensors`` file
(metadata ``arch``/``tier``/``variant``/``num_classes``/``num_frames``, keys in either layout)
or a ``rubiks-convert`` output directory (``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from timm.models import resolve_pretrained_cfg
from torch import nn

from rubiks_shift import check_shift

from .archs import TIERS, VARIANTS, arch_name
from .reference_keys import convert_reference_state, is_reference_layout, unwrap_state_dict

__all__ = [
    "CheckpointError",
    "StateDictFilter",
    "check_state_dict",
    "infer_arch",
    "read_checkpoint",
    "resolve_checkpoint",
    "strict_pretrained",
]

# (state dict, model) -> the state dict in the model's keys (timm's pretrained_filter_fn)
StateDictFilter = Callable[[Mapping[str, Any], nn.Module], dict]


class CheckpointError(ValueError):
    """A checkpoint that cannot be a RubiksNet of the expected architecture."""


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


def infer_arch(
    state: dict[str, torch.Tensor], custom_tier: str | None = None
) -> tuple[str, str, int]:
    """(tier, variant, num_classes) from the tensors of a state dict (either layout).
    ``custom_tier``: the tier a file records for an architecture of its own width, blocks
    or SE (``RubiksNet(..., width=...)``), used where no tier has the tensors' shape."""
    try:
        ours = convert_reference_state(state) if is_reference_layout(state) else state
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
    if tier is None and custom_tier in TIERS:
        tier = custom_tier
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


def check_state_dict(
    state: Mapping[str, Any],
    model: nn.Module,
    filter_fn: StateDictFilter,
    *,
    new_head: bool = False,
    adapt_in_chans: bool = False,
) -> dict:
    """``state`` converted by ``filter_fn`` to ``model``'s keys, every key, shape and shift
    value checked.

    Raises :class:`CheckpointError` naming the first unexpected, missing or mis-shaped key,
    or a shift with non-finite values. ``new_head``: the classifier (``fc.*``) is to be
    replaced, so its keys may be absent or of another shape (every other key is checked).
    ``adapt_in_chans``: the stem may have another number of input channels (timm's
    ``in_chans`` adaptation follows).
    """
    try:
        converted = filter_fn(state, model)
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
    # a file whose model_args (weights.save_weights) give its own width or blocks names the
    # tier they modify
    custom = meta.get("tier") if "model_args" in meta else None
    tier, variant, classes = infer_arch(state, custom)
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
    if frames == 0:
        raise CheckpointError("metadata 'num_frames' is 0; a clip has at least one frame")
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


def strict_pretrained(
    name: str, kwargs: dict[str, Any], filter_fn: StateDictFilter
) -> tuple[dict[str, Any], StateDictFilter]:
    """timm kwargs and a pretrained filter that load a weight file as strictly as
    ``load_pretrained``.

    The file is read here (errors name it), its architecture resolved, and timm is handed
    the tensors. The model takes the file's class count unless ``num_classes`` is given:
    a different explicit ``num_classes`` replaces the head (fine-tuning), every other key
    must be present, of the right shape and (shifts) finite. Without a local file (or with
    a state dict already given) ``kwargs`` and ``filter_fn`` come back unchanged.
    """
    cfg = resolve_pretrained_cfg(
        name,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if (
        not cfg.file
        or cfg.state_dict is not None
        or cfg.source not in (None, "", "timm", "local-dir")
    ):
        return kwargs, filter_fn
    path = Path(cfg.file).expanduser()
    state, _, (_, _, classes, _) = resolve_checkpoint(path)
    requested = kwargs.get("num_classes")
    new_head = requested is not None and requested != classes

    def strict_filter(state_dict: Mapping[str, Any], model: nn.Module) -> dict:
        try:
            return check_state_dict(
                dict(state_dict), model, filter_fn, new_head=new_head, adapt_in_chans=True
            )
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: does not fit {name}: {exc}") from exc

    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    overlay.update(source="", state_dict=state, num_classes=classes, file=str(path))
    out = {**kwargs, "pretrained_cfg_overlay": overlay}
    out.setdefault("num_classes", classes)
    return out, strict_filter
