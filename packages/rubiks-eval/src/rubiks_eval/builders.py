"""Glue to rubiks-models and rubiks-data: models, datasets and optimizer groups from options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["build_dataset", "build_eval_dataset", "default_scale_size", "param_groups"]


def default_scale_size(crop_size: int) -> int:
    """Short side before cropping: 256 for a 224 crop, scaled alike for other crops."""
    return max(crop_size, round(crop_size * 256 / 224))


def _guess_list_kind(path: Path) -> str:
    """``json`` (SSv2 annotations), ``frames`` (id frames label) or ``videos`` (path label)."""
    if path.suffix.lower() == ".json":
        return "json"
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.replace(",", " ").split()
            if parts:
                return "frames" if len(parts) >= 3 and parts[-2].isdigit() else "videos"
    raise ValueError(f"{path}: empty list file")


def _make(
    name: str | None,
    root: str | None,
    split: str,
    list_file: str | None,
    labels_file: str | None,
    **kwargs: Any,
) -> Any:
    import rubiks_data

    if name is None:
        if list_file is None:
            raise ValueError("give a dataset name or a list/annotation file")
        path = Path(list_file)
        if not path.is_file():
            raise FileNotFoundError(f"list/annotation file not found: {path}")
        kind = _guess_list_kind(path)
        if kind == "json":
            name, kwargs["annotations"], list_file = "somethingv2", str(path), None
            kwargs["video"] = True
        elif kind == "videos":
            name = "video-list"
        else:
            name = "somethingv2"
            kwargs["video"] = False
        root = root or str(path.parent)
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root-path")
    if name in ("somethingv2", "ssv2", "synthetic") and list_file and list_file.endswith(".json"):
        kwargs["annotations"], list_file = list_file, None
    return rubiks_data.build_dataset(
        name, root, split, list_file=list_file, labels_file=labels_file, **kwargs
    )


def build_eval_dataset(args: Any) -> tuple[Any, list[str] | None]:
    """The test-mode dataset of ``rubiks-eval``'s options, and its class names (if known)."""
    scale = args.scale_size or default_scale_size(args.crop_size)
    ds = _make(
        args.dataset,
        args.root_path,
        args.split,
        args.val_list,
        args.labels_file,
        mode="test",
        protocol=args.protocol,
        num_segments=args.num_frames,
        crop_size=args.crop_size,
        scale_size=scale,
        **({"template": args.template} if getattr(args, "template", None) else {}),
    )
    return ds, getattr(ds, "class_names", None)


def build_dataset(cfg: Any, split: str) -> Any:
    """Training (``split="train"``, TSM augmentation) or 1-clip validation dataset."""
    scale = cfg.scale_size or default_scale_size(cfg.input_size)
    train = split == "train"
    return _make(
        cfg.dataset,
        cfg.root_path,
        "train" if train else "val",
        cfg.train_list if train else cfg.val_list,
        cfg.labels_file,
        mode="train" if train else "test",
        protocol="1clip",
        num_segments=cfg.num_frames,
        crop_size=cfg.input_size,
        scale_size=scale,
        seed=cfg.seed if train else None,
    )


def _fallback_param_groups(model: nn.Module, weight_decay: float, shift_lr_mult: float) -> list:
    shifts, no_decay, decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("shift"):
            shifts.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0, "name": "no_decay"},
        {"params": shifts, "weight_decay": 0.0, "lr_mult": shift_lr_mult, "name": "shift"},
    ]
    return [g for g in groups if g["params"]]


def param_groups(model: nn.Module, weight_decay: float, shift_lr_mult: float) -> list[dict]:
    """SGD groups: shifts (lr x ``shift_lr_mult``, no decay), BN/bias (no decay), the rest.

    Each group carries ``lr_mult``; the training loop sets ``lr = base_lr * lr_mult``.
    """
    return _fallback_param_groups(model, weight_decay, shift_lr_mult)


def _json_meta(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


_WIDTH_TIER = {54: "tiny"}


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, Any]]:
    """(state dict, metadata) of a safetensors file or a reference ``.pth.tar``."""
    import torch

    if path.suffix == ".safetensors":
        from .checkpoint import load_weights, weights_metadata

        return load_weights(path), {k: _json_meta(v) for k, v in weights_metadata(path).items()}
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        meta = {k: v for k, v in obj.items() if k != "model" and not isinstance(v, dict)}
        return obj["model"], meta
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], {}
    if isinstance(obj, dict):
        return obj, {}
    raise ValueError(f"{path}: not a checkpoint (expected a state dict)")


def _infer_tier(state: dict) -> str:
    width = int(state["backbone.conv1.weight"].shape[0])
    if width in _WIDTH_TIER:
        return _WIDTH_TIER[width]
    if any(".se." in k for k in state):
        return "small"
    n3 = len({k.split(".")[2] for k in state if k.startswith("backbone.layer3.")})
    return "large" if n3 > 23 else "medium"


def load_model(
    pretrained: str,
    *,
    arch: str | None = None,
    num_frames: int = 8,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model with weights from a checkpoint file or a timm name[.tag]; and a description.

    Checkpoint files: safetensors (metadata ``arch``/``tier``/``num_classes`` when
    present) or a reference ``.pth.tar``. The class count comes from the checkpoint.
    Uses rubiks-models when installed; otherwise, for reference-layout checkpoints of
    the non-AQ variant, the fallback port in :mod:`rubiks_eval._reference_model`.
    """
    path = Path(pretrained).expanduser()
    try:
        import rubiks_models
    except ImportError:
        rubiks_models = None
    if not path.is_file():
        if rubiks_models is None:
            raise FileNotFoundError(
                f"{pretrained}: no such checkpoint file (timm names need rubiks-models)"
            )
        import timm

        model = timm.create_model(pretrained, pretrained=True, num_frames=num_frames)
        return model, {"arch": pretrained, "num_classes": model.num_classes, "source": "timm"}
    state, meta = _read_checkpoint(path)
    if "backbone.conv1.weight" not in state or "new_fc.weight" not in state:
        raise ValueError(
            f"{path}: not a RubiksNet checkpoint in the reference layout "
            "(no backbone.conv1.weight / new_fc.weight)"
        )
    tier = str(meta.get("tier") or _infer_tier(state))
    variant = str(
        meta.get("variant")
        or ("rubiks3d-aq" if any(k.endswith("conv2.0.T") for k in state) else "rubiks3d")
    )
    classes = int(state["new_fc.weight"].shape[0])
    if num_classes is not None and num_classes != classes:
        raise ValueError(f"{path} has {classes} classes, not {num_classes}")
    name = arch or meta.get("arch") or f"rubiksnet_{tier}" + ("_aq" if "aq" in variant else "")
    info = {
        "arch": name,
        "tier": tier,
        "variant": variant,
        "num_classes": classes,
        "num_frames": int(meta.get("num_frames") or num_frames),
        "file": str(path),
    }
    if "aq" in variant:
        raise RuntimeError(f"{path}: the AQ variant needs rubiks-models (pip install it)")
    from ._reference_model import ReferenceLayoutRubiksNet

    model = ReferenceLayoutRubiksNet(classes, tier, dropout=0.0)
    model.load_state_dict(state, strict=True)
    info["source"] = "rubiks_eval._reference_model"
    return model, info


def load_matching(model: nn.Module, state: dict, head_prefixes: tuple[str, ...]) -> list[str]:
    """Load ``state`` into ``model``, skipping classifier tensors whose shape differs.

    Returns the skipped keys (a new class count: fine-tuning). Any other missing,
    unexpected or mis-shaped key is an error.
    """
    own = model.state_dict()
    skipped = [
        k
        for k, v in state.items()
        if k in own and own[k].shape != v.shape and k.startswith(head_prefixes)
    ]
    kept = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return skipped


def build_model(cfg: Any, dataset: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train: ``cfg.arch`` with ``cfg.num_classes`` (default: the dataset's).

    ``cfg.pretrained`` (a checkpoint file) initialises it; a classifier of another class
    count is replaced by a new one (fine-tuning). Without rubiks-models installed the
    reference-layout port is used (non-AQ tiers only).
    """
    num_classes = cfg.num_classes or getattr(dataset, "num_classes", None)
    if not num_classes:
        raise ValueError("num_classes unknown: pass --num-classes")
    tier = cfg.arch.removeprefix("rubiksnet_")
    if getattr(cfg, "freeze_temporal_shift", False):
        raise NotImplementedError("--freeze-temporal-shift needs rubiks-models (issue 7)")
    from ._reference_model import TIERS, ReferenceLayoutRubiksNet

    if tier not in TIERS:
        raise ValueError(f"arch {cfg.arch!r}: without rubiks-models only {sorted(TIERS)} tiers")
    model = ReferenceLayoutRubiksNet(num_classes, tier, dropout=cfg.dropout)
    meta: dict[str, Any] = {
        "arch": cfg.arch,
        "tier": tier,
        "variant": "rubiks3d",
        "num_classes": num_classes,
        "num_frames": cfg.num_frames,
    }
    if cfg.pretrained:
        state, _ = _read_checkpoint(Path(cfg.pretrained).expanduser())
        skipped = load_matching(model, state, ("new_fc.",))
        meta["initialised_from"] = str(cfg.pretrained)
        if skipped:
            print(f"fine-tuning: new classifier ({num_classes} classes), skipped {skipped}")
    return model, meta
