#!/usr/bin/env python
"""Do RubiksNet's temporal shifts learn time? Train RubiksNet-Tiny on rubiks-data's
synthetic temporal data set three ways and compare on its validation split:

* ``full``   — rubiksnet_tiny as is;
* ``frozen`` — the same with every temporal shift fixed at 0 (``freeze_temporal_shifts``):
  frames are then only mixed by the final average, so a clip and its time reversal look
  the same and the six reversal pairs cap top-1 at 50 %;
* ``aq``     — rubiksnet_tiny_aq: temperature annealed from soft attention to one-hot, a
  budget penalty on the expected fraction of temporally shifted channels, then hardened
  (channels over the budget re-centred by ``rubiks_models.optim.aq_enforce_budget``,
  integer shifts by ``rubiks_models.deploy.quantize_model``) and evaluated again.

Clips are rendered in memory (``rubiks_data.synthetic.render_clip``, no video codec
needed) and kept on the device as uint8; sampling is TSM's (``--segments`` segments, a
random frame per segment in training, the middle one in validation) with a random /
centre crop. Writes ``results.json``, one JSONL log and the trained weights
(``<variant>.safetensors``, for ``tools/plot_shifts.py``) per variant to ``--out``.

    python tools/shift_ablation.py --out runs/ablation            # GPU: a few minutes
    python tools/shift_ablation.py --out /tmp/abl --quick         # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)


def _render(args: tuple) -> torch.Tensor:
    from rubiks_data.synthetic.generate import clip_spec
    from rubiks_data.synthetic.render import render_clip

    config, split, index, label = args
    return torch.from_numpy(render_clip(clip_spec(config, split, index, label)))


def render_split(config, split: str, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips uint8 (N, F, H, W, 3), labels (N,)) of one split, rendered in parallel."""
    from rubiks_data.synthetic.generate import split_labels

    labels = split_labels(config, split)
    jobs = [(config, split, i, label) for i, label in enumerate(labels)]
    # spawn, not fork: a forked child of a process that has started torch's thread pools
    # can deadlock
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        clips = list(pool.map(_render, jobs, chunksize=8))
    return torch.stack(clips), torch.tensor(labels)


def sample(clips: torch.Tensor, segments: int, crop: int, train: bool, gen) -> torch.Tensor:
    """TSM sampling and cropping of a uint8 batch -> normalised float (N, T, 3, crop, crop)."""
    n, frames, h, w, _ = clips.shape
    seg = frames / segments
    starts = torch.arange(segments, device=clips.device) * seg
    if train:
        offsets = torch.rand(n, segments, device=clips.device, generator=gen) * seg
    else:
        offsets = torch.full((n, segments), seg / 2, device=clips.device)
    idx = (starts + offsets).long().clamp_max(frames - 1)
    video = clips[torch.arange(n, device=clips.device)[:, None], idx]  # (N, T, H, W, 3)
    if train:
        y0 = int(torch.randint(0, h - crop + 1, (1,), generator=gen, device=clips.device))
        x0 = int(torch.randint(0, w - crop + 1, (1,), generator=gen, device=clips.device))
    else:
        y0, x0 = (h - crop) // 2, (w - crop) // 2
    video = video[:, :, y0 : y0 + crop, x0 : x0 + crop].permute(0, 1, 4, 2, 3).float() / 255
    return (video - MEAN.to(video.device)) / STD.to(video.device)


@torch.no_grad()
def evaluate(model, clips, labels, args) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(clips), args.batch_size):
        x = sample(clips[i : i + args.batch_size], args.segments, args.crop, False, None)
        correct += int((model(x).argmax(1) == labels[i : i + args.batch_size]).sum())
    return 100.0 * correct / len(clips)


def _aq_hard_fraction(model) -> float:
    from rubiks_models import TemporalAttentionShift

    taps = [
        m.attention().argmax(1) for m in model.modules() if isinstance(m, TemporalAttentionShift)
    ]
    return float((torch.cat(taps) != 1).float().mean())


def train_variant(name: str, data: dict, args, out: Path) -> dict:
    import timm

    from rubiks_eval.builders import freeze_temporal_shifts
    from rubiks_models.optim import (
        aq_budget_penalty,
        aq_shifted_fraction,
        aq_temperature,
        param_groups,
        set_aq_temperature,
    )

    torch.manual_seed(args.seed)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    arch = "rubiksnet_tiny_aq" if name == "aq" else "rubiksnet_tiny"
    model = timm.create_model(
        arch, num_classes=data["classes"], num_frames=args.segments, drop_rate=args.dropout
    ).to(args.device)
    if name == "frozen":
        freeze_temporal_shifts(model)
    groups = param_groups(model, weight_decay=5e-4, shift_lr_mult=args.shift_lr_mult)
    for g in groups:
        g["lr"] = args.lr * g["lr_mult"]
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9)
    aq_channels = sum(
        int(p.shape[0]) for n, p in model.named_parameters() if n.endswith("tshift.weight")
    )
    clips, labels = data["train"]
    steps_per_epoch = len(clips) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch
    log = (out / f"{name}.jsonl").open("w")
    step = 0
    tic = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(clips), device=args.device, generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = sample(clips[idx], args.segments, args.crop, True, gen)
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = args.lr * g["lr_mult"] * scale
            if name == "aq":
                set_aq_temperature(model, aq_temperature(step, total, 2.0, args.aq_end_tau))
            loss = F.cross_entropy(model(x), labels[idx])
            if name == "aq":  # per-channel weight: the penalty is a mean over channels
                penalty = aq_budget_penalty(model, args.aq_budget)
                loss = loss + args.aq_penalty * aq_channels * penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        record = {
            "variant": name,
            "epoch": epoch + 1,
            "step": step,
            "loss": sum(losses) / len(losses),
            "val_top1": evaluate(model, *data["val"], args),
            "seconds": round(time.perf_counter() - tic, 1),
        }
        if name == "aq":
            record["aq_expected_shifted_fraction"] = float(aq_shifted_fraction(model).detach())
        history.append(record)
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)
    log.close()
    result = {
        "arch": arch,
        "final_val_top1": history[-1]["val_top1"],
        "best_val_top1": max(r["val_top1"] for r in history),
        "train_seconds": history[-1]["seconds"],
        "steps": step,
    }
    if name == "frozen":
        shifts = [p for n, p in model.named_parameters() if n.endswith("rubiks.shift")]
        result["max_abs_temporal_shift"] = max(float(p[0].detach().abs().max()) for p in shifts)
    if name == "aq":
        import copy

        from rubiks_models.deploy import quantize_model
        from rubiks_models.optim import aq_enforce_budget

        result["aq_budget"] = args.aq_budget
        result["aq_expected_shifted_fraction"] = float(aq_shifted_fraction(model).detach())
        result["aq_trained_hard_shifted_fraction"] = _aq_hard_fraction(model)
        enforced = copy.deepcopy(model)
        result["aq_channels_recentred"] = aq_enforce_budget(enforced, args.aq_budget)
        result["aq_hard_shifted_fraction"] = _aq_hard_fraction(enforced)
        result["hardened_val_top1"] = evaluate(quantize_model(enforced), *data["val"], args)
    from rubiks_models.weights import save_weights

    save_weights(model, out / f"{name}.safetensors")  # for tools/plot_shifts.py
    return result


VARIANTS = ("full", "frozen", "aq")


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace, out: Path) -> None:
    """Refuse impossible settings and a folder holding another run, before any work."""
    from rubiks_eval.argcheck import device_error

    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {','.join(VARIANTS)}")
    for name in ("num_train", "num_val", "epochs", "batch_size", "segments", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > args.num_train:
        p.error(f"--batch-size {args.batch_size} is more than --num-train {args.num_train}")
    if args.crop > args.size or args.crop < 1:
        p.error(f"--crop must be in 1..--size ({args.size}), got {args.crop}")
    if args.segments > args.frames:
        p.error(f"--segments {args.segments} is more than --frames {args.frames}")
    if not args.lr > 0 or args.shift_lr_mult < 0 or not 0 <= args.dropout < 1:
        p.error("--lr must be > 0, --shift-lr-mult >= 0 and --dropout in [0, 1)")
    if not 0 <= args.aq_budget <= 1:
        p.error(f"--aq-budget must be a fraction in [0, 1], got {args.aq_budget}")
    error = device_error(args.device)
    if error:
        p.error(error)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file; name a folder")
    names = ["results.json"] + [f"{v}.{ext}" for v in VARIANTS for ext in ("jsonl", "safetensors")]
    taken = [n for n in names if (out / n).exists()]
    if taken and not args.overwrite:
        p.error(f"--out {out} holds a previous run ({taken[0]}, ...); pass --overwrite")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shift_ablation.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variants", default="full,frozen,aq")
    p.add_argument("--num-train", type=int, default=2400)
    p.add_argument("--num-val", type=int, default=480)
    p.add_argument("--size", type=int, default=64, help="rendered frame side")
    p.add_argument("--frames", type=int, default=16, help="rendered frames per clip")
    p.add_argument("--crop", type=int, default=56)
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--shift-lr-mult", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--aq-budget", type=float, default=0.125)
    p.add_argument(
        "--aq-penalty",
        type=float,
        default=0.005,
        help="budget penalty weight per AQ channel (times the channel count, so the "
        "pull on each channel's taps does not shrink with the network's width)",
    )
    p.add_argument("--aq-end-tau", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke-test sizes")
    p.add_argument("--overwrite", action="store_true", help="replace the results of a run in --out")
    args = p.parse_args(argv)
    if args.quick:
        args.num_train, args.num_val, args.epochs, args.batch_size = 48, 24, 2, 8
        args.size, args.crop, args.frames, args.segments = 40, 32, 8, 4
    out = Path(args.out).expanduser()
    _check_args(p, args, out)
    from rubiks_data.synthetic.generate import SynthConfig
    from rubiks_eval.io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    config = SynthConfig(
        num_train=args.num_train,
        num_val=args.num_val,
        width=args.size,
        height=args.size,
        num_frames=args.frames,
        seed=args.seed,
    )
    tic = time.perf_counter()
    data = {"classes": len(config.class_defs())}
    for key, split in (("train", "train"), ("val", "validation")):
        clips, labels = render_split(config, split, args.workers)
        data[key] = (clips.to(args.device), labels.to(args.device))
    render_s = time.perf_counter() - tic
    print(f"rendered {args.num_train}+{args.num_val} clips in {render_s:.1f} s", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    doc = {
        "command": " ".join(sys.argv),
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "classes": data["classes"],
        "chance_top1": 100.0 / data["classes"],
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "render_seconds": round(render_s, 1),
        "variants": {},
    }
    for name in args.variants.split(","):
        doc["variants"][name] = train_variant(name, data, args, out)
        atomic_write_json(out / "results.json", doc)
    print(json.dumps(doc["variants"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
