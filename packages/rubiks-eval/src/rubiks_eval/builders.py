"""Glue to rubiks-models and rubiks-data: models, datasets and optimizer groups from options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "build_dataset",
    "build_eval_dataset",
    "build_model",
    "checkpoint_class_names",
    "default_scale_size",
    "freeze_temporal_shifts",
    "load_matching",
    "load_model",
    "match_classes",
    "param_groups",
    "resolve_pretrained",
]


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
        if name.lower() in ("dummy", "random"):
            root = "."  # random clips: nothing is read
        else:
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
    if (cfg.dataset or "").lower() in ("dummy", "random"):
        # the same random clips in both splits (validation measures memorisation)
        return _make(
            cfg.dataset,
            cfg.root_path,
            split,
            None,
            None,
            mode="train" if train else "test",
            num_videos=cfg.dummy_videos,
            num_classes=cfg.num_classes,
            num_segments=cfg.num_frames,
            crop_size=cfg.input_size,
            seed=cfg.seed,
        )
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


def param_groups(model: nn.Module, weight_decay: float, shift_lr_mult: float) -> list[dict]:
    """SGD groups of rubiks-models' policy: shifts (lr x ``shift_lr_mult``, no decay), AQ
    attention logits and BN/bias (no decay), the rest. Each group carries ``lr_mult``; the
    training loop sets ``lr = base_lr * lr_mult``."""
    from rubiks_models.optim import param_groups as groups

    return groups(model, weight_decay=weight_decay, shift_lr_mult=shift_lr_mult)


def _describe(model: nn.Module, **extra: Any) -> dict[str, Any]:
    from rubiks_models.weights import arch_name

    return {
        "arch": arch_name(model.tier, model.variant),
        "tier": model.tier,
        "variant": model.variant,
        "num_classes": model.num_classes,
        "num_frames": model.num_frames,
        **extra,
    }


def load_model(
    pretrained: str,
    *,
    arch: str | None = None,
    num_frames: int = 8,
    num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A RubiksNet (rubiks-models) with weights from ``pretrained``; and a description.

    ``pretrained`` is a checkpoint file or directory (safetensors written by rubiks-models,
    ``rubiks-convert`` or our training, or a reference ``.pth.tar``, plain or AQ: the
    architecture and class count come from the checkpoint), or a timm name with an
    optional tag (``rubiksnet_large.ssv2``) whose weights rubiks-models finds locally.
    ``arch``/``num_classes``, when given, must match what the checkpoint holds.
    """
    import timm
    from rubiks_models.weights import load_model as load_checkpoint

    path = Path(pretrained).expanduser()
    if path.exists():
        model = load_checkpoint(path, num_frames=num_frames)
        info = _describe(model, file=str(path), source="checkpoint")
        names = checkpoint_class_names(path)
        if names is not None:
            info["class_names"] = names
    else:
        name = pretrained.split(".", 1)[0]
        if name not in timm.list_models("rubiksnet*"):
            raise FileNotFoundError(
                f"--pretrained {pretrained!r}: no such checkpoint file, and not a RubiksNet "
                f"timm name (one of {', '.join(timm.list_models('rubiksnet*'))})"
            )
        try:
            model = timm.create_model(pretrained, pretrained=True, num_frames=num_frames)
        except FileNotFoundError as exc:  # rubiks-models says which file and where
            raise FileNotFoundError(
                f"--pretrained {pretrained!r}: {exc}; or pass the checkpoint file itself "
                "(--pretrained PATH)"
            ) from exc
        except (RuntimeError, OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"--pretrained {pretrained!r}: its weights could not be loaded ({exc}); "
                "pass the checkpoint file itself (--pretrained PATH)"
            ) from exc
        info = _describe(model, source="timm", pretrained=pretrained)
    if arch is not None and arch != info["arch"]:
        raise ValueError(f"{pretrained} holds a {info['arch']}, not the requested {arch}")
    if num_classes is not None and num_classes != info["num_classes"]:
        raise ValueError(f"{pretrained} has {info['num_classes']} classes, not {num_classes}")
    return model, info


def checkpoint_class_names(path: str | Path) -> list[str] | None:
    """The class names a safetensors checkpoint (file, or ``rubiks-convert``/training
    folder) stores in its ``class_names`` metadata, or None."""
    import json

    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("class_names")
    except (SafetensorError, OSError):
        return None
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: metadata 'class_names' is not a JSON list of strings")
    return names


def match_classes(
    model: nn.Module, info: dict[str, Any], dataset: Any, *, allow_mismatch: bool = False
) -> str | None:
    """Check the checkpoint's classes against the dataset's before scoring.

    The class counts must agree (a dataset without class names, whose count is its
    largest label + 1, may have fewer), and class names stored in both must be the same
    set: the same names in another order are remapped (the classifier's rows permuted to
    the dataset's order). Anything else is a ValueError unless ``allow_mismatch``.
    Returns a notice to print, or None.
    """
    classes = int(info.get("num_classes") or 0)
    ds_classes = int(getattr(dataset, "num_classes", 0) or 0)
    ds_names = getattr(dataset, "class_names", None)
    names = info.get("class_names")
    source = info.get("file") or info.get("pretrained") or "the checkpoint"
    problem = None
    if (ds_names is not None and ds_classes != classes) or ds_classes > classes:
        problem = f"{source} has {classes} classes but the dataset has {ds_classes}"
    elif names is not None and ds_names is not None and list(names) != list(ds_names):
        if len(set(names)) == len(names) and set(names) == set(ds_names):
            _reorder_classifier(model, [names.index(n) for n in ds_names])
            return f"classes of {source} reordered to the dataset's order (same names)"
        missing = sorted(set(ds_names) - set(names))[:3]
        problem = (
            f"the class names of {source} differ from the dataset's (e.g. dataset classes "
            f"{missing} are not in the checkpoint)"
        )
    if problem is None:
        if ds_names is None and ds_classes < classes:
            return (
                f"the dataset names no classes; its labels 0..{ds_classes - 1} are scored "
                f"against the {classes} classes of {source}"
            )
        return None
    if not allow_mismatch:
        raise ValueError(f"{problem}; pass --allow-class-mismatch to evaluate anyway")
    return f"warning: {problem}; evaluated anyway (--allow-class-mismatch)"


def _reorder_classifier(model: nn.Module, order: list[int]) -> None:
    import torch

    head = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    index = torch.tensor(order, device=head.weight.device)
    with torch.no_grad():
        head.weight.copy_(head.weight[index])
        if head.bias is not None:
            head.bias.copy_(head.bias[index])


def load_matching(model: nn.Module, state: dict, head_prefixes: tuple[str, ...]) -> list[str]:
    """Load ``state`` (either key layout) into ``model``, skipping classifier tensors whose
    shape differs (a new class count: fine-tuning). Returns the skipped keys; any other
    missing, unexpected or mis-shaped key is an error."""
    from rubiks_models.rubiksnet import checkpoint_filter_fn

    state = checkpoint_filter_fn(state, model)
    for k, v in state.items():
        if k.endswith("rubiks.shift") and not bool(v.isfinite().all()):
            raise ValueError(f"checkpoint key {k!r} has non-finite shift values")
    own = model.state_dict()
    skipped = [
        k
        for k, v in state.items()
        if k in own and own[k].shape != v.shape and k.startswith(head_prefixes)
    ]
    kept = {k: v for k, v in state.items() if k not in skipped}
    wrong = [k for k, v in kept.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in kept.items() if k not in wrong}, strict=False
    )
    missing = [k for k in missing if k not in skipped and k not in wrong]
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint does not fit the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, mis-shaped {wrong[:5]}"
        )
    return skipped


def resolve_pretrained(pretrained: str) -> Path:
    """The weight file of ``--pretrained``: a path, or a released tag of a timm name
    (``rubiksnet_tiny.kinetics``) found where rubiks-models looks for local weights."""
    from rubiks_models.rubiksnet import RELEASED_FILES, require_weight_file

    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    if pretrained in RELEASED_FILES:
        try:
            return require_weight_file(pretrained)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"--pretrained {pretrained}: {exc}; or pass the checkpoint file itself"
            ) from None
    raise FileNotFoundError(
        f"--pretrained {pretrained!r}: no such file, and not a released tag "
        f"({', '.join(sorted(RELEASED_FILES))})"
    )


def build_model(cfg: Any, dataset: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train: timm's ``cfg.arch`` (a RubiksNet from rubiks-models) with
    ``cfg.num_classes`` (default: the dataset's).

    ``cfg.pretrained`` (a checkpoint file, either key layout) initialises it; a
    classifier of another class count is replaced by a new one (fine-tuning).
    """
    import timm
    from rubiks_models.weights import read_checkpoint

    num_classes = cfg.num_classes or getattr(dataset, "num_classes", None)
    if not num_classes:
        raise ValueError("num_classes unknown: pass --num-classes")
    if cfg.arch not in timm.list_models("rubiksnet*"):
        raise ValueError(
            f"arch {cfg.arch!r} is not a RubiksNet; one of {timm.list_models('rubiksnet*')}"
        )
    model = timm.create_model(
        cfg.arch, num_classes=num_classes, num_frames=cfg.num_frames, drop_rate=cfg.dropout
    )
    meta = _describe(model)
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) == num_classes:
        meta["class_names"] = list(names)  # checked by rubiks-eval against its dataset
    freeze = getattr(cfg, "freeze_temporal_shift", False)
    if cfg.pretrained:
        source = resolve_pretrained(cfg.pretrained)
        state, _ = read_checkpoint(source)
        try:
            skipped = load_matching(model, state, ("fc.",))
        except ValueError as exc:
            raise ValueError(f"--pretrained {source}: {exc}") from exc
        meta["initialised_from"] = str(source)
        if skipped:
            print(f"fine-tuning: new classifier ({num_classes} classes), skipped {skipped}")
    if freeze:
        meta["frozen_temporal_shifts"] = freeze_temporal_shifts(model)
    return model, meta


def freeze_temporal_shifts(model: nn.Module) -> int:
    """Ablation: every 3-D shift's temporal row set to 0 and kept there (its gradient is
    zeroed by a hook, and shifts have no weight decay), so the network sees no motion
    across frames except through the classifier's average. Returns the number of layers.
    """
    import torch
    from rubiks_models.rubiksnet import is_shift_param

    if getattr(model, "variant", None) != "rubiks3d":
        raise ValueError(
            "--freeze-temporal-shift applies to the rubiksnet_<tier> models (3-D shifts); "
            f"this model's variant is {getattr(model, 'variant', None)!r}"
        )
    count = 0
    for name, p in model.named_parameters():
        if not is_shift_param(name) or p.dim() != 2 or p.shape[0] != 3:
            continue
        with torch.no_grad():
            p[0].zero_()
        mask = torch.ones_like(p)
        mask[0] = 0
        p.register_hook(lambda g, mask=mask: g * mask.to(g.dtype))
        count += 1
    if not count:
        raise ValueError("no 3-D shift parameters found to freeze")
    return count
