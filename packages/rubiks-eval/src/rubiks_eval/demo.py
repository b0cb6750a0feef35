"""The embedded default (``nox -s eval``): the whole protocol on CPU, nothing downloaded.

1. Generates (or reuses from the cache, published atomically) the synthetic validation
   split that the bundled checkpoint was trained against (rubiks-data's temporal
   generator, real encoded videos; settings read from the checkpoint's metadata).
2. Loads the bundled RubiksNet-Tiny checkpoint (safetensors, in ``rubiks_eval/assets``).
3. Evaluates it with the 1-clip and 2-clip (2 clips x 3 crops) protocols, prints a table.

``python -m rubiks_eval.demo [--cache-dir DIR] [--output DIR] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .cache import cache_root, cached_directory
from .checkpoint import weights_metadata
from .cli import evaluate_from_args
from .distributed import DistEnv, resolve_device
from .evaluate import EvalResult
from .report import format_summary, format_table, save_results

__all__ = ["DEFAULT_CHECKPOINT", "ensure_synthetic_val", "main"]

DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "rubiksnet_tiny_synthetic.safetensors"


def _synth_config(settings: dict[str, Any], num_val: int | None) -> Any:
    from rubiks_data.synthetic import SynthConfig

    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    values["num_train"] = 0  # clips are functions of (seed, split, index): val is unchanged
    if num_val is not None:
        values["num_val"] = num_val
    return SynthConfig(**values)


def ensure_synthetic_val(
    settings: dict[str, Any],
    cache_dir: str | Path | None = None,
    *,
    num_val: int | None = None,
    workers: int = 1,
    rebuild: bool = False,
    progress: bool = True,
) -> tuple[Path, bool]:
    """The synthetic validation split for generator ``settings``; (folder, generated now)."""
    import rubiks_data
    from rubiks_data.synthetic import generate

    config = _synth_config(settings, num_val)
    key = {"generator": config.to_json(), "rubiks_data": rubiks_data.__version__}
    return cached_directory(
        cache_dir or cache_root(),
        "synthetic-val",
        key,
        lambda d: generate(d, config, workers=workers, progress=progress),
        rebuild=rebuild,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rubiks_eval.demo",
        description="Evaluate the bundled RubiksNet-Tiny on the synthetic temporal validation "
        "set with the 1-clip and 2-clip protocols (CPU, nothing downloaded).",
    )
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="bundled by default")
    p.add_argument(
        "--cache-dir",
        help="where the generated videos are kept (default $RUBIKSNET_CACHE, else "
        "$XDG_CACHE_HOME/rubiksnet or ~/.cache/rubiksnet)",
    )
    p.add_argument("--regenerate", action="store_true", help="rebuild the cached data set")
    p.add_argument("--num-val", type=int, help="validation videos (default: as trained)")
    p.add_argument("--protocols", nargs="+", default=["1clip", "2clip"], choices=["1clip", "2clip"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", "-b", type=int, default=8)
    p.add_argument("-j", "--workers", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", "-o", help="folder for results-<protocol>.json")
    p.add_argument("--overwrite", action="store_true", help="replace existing results files")
    p.add_argument(
        "--min-top1", type=float, help="exit with status 1 if a protocol's top-1 is below this (%%)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    from .argcheck import device_error, output_errors
    from .builders import build_eval_dataset, load_model

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--num-val", args.num_val), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    error = device_error(args.device)
    if error:
        parser.error(error)
    if args.output:
        if Path(args.output).exists() and not Path(args.output).is_dir():
            parser.error(f"--output {args.output} is a file; name a folder")
        outputs = {
            f"--output's results-{p}.json": Path(args.output) / f"results-{p}.json"
            for p in args.protocols
        }
        errors = output_errors(outputs, inputs=[args.checkpoint], overwrite=args.overwrite)
        if errors:
            parser.error(errors[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        print(f"demo checkpoint not found: {ckpt}", file=sys.stderr)
        return 2
    meta = weights_metadata(ckpt)
    if "synthetic" not in meta:
        print(f"{ckpt} has no 'synthetic' generator settings in its metadata", file=sys.stderr)
        return 2
    settings = json.loads(meta["synthetic"])
    eval_cfg = json.loads(meta.get("eval", "{}"))
    tic = time.perf_counter()
    root, built = ensure_synthetic_val(
        settings,
        args.cache_dir,
        num_val=args.num_val,
        workers=max(1, args.workers),
        rebuild=args.regenerate,
        progress=args.progress,
    )
    print(
        f"synthetic validation set: {root} "
        f"({'generated' if built else 'cached'}, {time.perf_counter() - tic:.1f} s)"
    )
    env = DistEnv(device=resolve_device(args.device))
    model, info = load_model(str(ckpt))
    model.to(env.device).eval()
    num_frames = int(eval_cfg.get("num_frames", info.get("num_frames", 8)))
    crop = int(eval_cfg.get("crop_size", 56))
    scale = int(eval_cfg.get("scale_size", 64))
    print(
        f"model: {info.get('arch')} ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters) from {ckpt.name}; {num_frames} frames, crop {crop} of short side "
        f"{scale}, device {env.device}"
    )
    rows: list[tuple[str, EvalResult]] = []
    chance = None
    for protocol in args.protocols:
        ns = argparse.Namespace(
            dataset="synthetic",
            root_path=str(root),
            split="val",
            val_list=None,
            labels_file=None,
            protocol=protocol,
            num_frames=num_frames,
            crop_size=crop,
            scale_size=scale,
        )
        dataset, _ = build_eval_dataset(ns)
        chance = 100.0 / dataset.num_classes
        result = evaluate_from_args(model, dataset, args, env, protocol)
        print(format_summary(result, title=f"== {protocol} =="))
        rows.append((protocol, result))
        if args.output:
            config = {
                "checkpoint": str(ckpt),
                "protocol": protocol,
                "data": str(root),
                "num_frames": num_frames,
                "crop_size": crop,
                "scale_size": scale,
            }
            save_results(Path(args.output) / f"results-{protocol}.json", result, config, False)
    print()
    print(format_table(rows))
    print(
        f"\nchance level: {chance:.2f} % top-1 ({100 / chance:.0f} balanced classes, "
        "in time-reversal pairs: a model blind to frame order scores <= 50 %)"
    )
    if args.min_top1 is not None:
        low = [name for name, r in rows if not r.metrics.top1 >= args.min_top1]
        if low:
            print(f"FAILED: top-1 below {args.min_top1} % for {low}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
