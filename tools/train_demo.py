#!/usr/bin/env python
"""Train the bundled demo checkpoint (RubiksNet-Tiny on the synthetic temporal data set).

Generates the synthetic training data (rubiks-data; cached), trains with
:mod:`rubiks_eval.training`, and writes the best validation weights, with the generator
settings in the metadata that ``python -m rubiks_eval.demo`` reads, to ``--export``.

    python tools/train_demo.py --output runs/demo \\
        --export packages/rubiks-eval/src/rubiks_eval/assets/rubiksnet_tiny_synthetic.safetensors \\
        --overwrite

Other options go to tools/train.py's parser (``--epochs``, ``-b``, ``--lr``, ...). The
model is rubiks-models' ``rubiksnet_tiny`` (the bundled checkpoint was trained with an
earlier port that stored the released checkpoints' key layout; rubiks-models reads both).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
for _src in sorted((ROOT / "packages").glob("*/src")):
    if str(_src) not in sys.path:
        sys.path.append(str(_src))

SYNTH = {
    "num_train": 1800,
    "num_val": 240,
    "width": 64,
    "height": 64,
    "num_frames": 16,
    "seed": 0,
}
# fmt: off
DEFAULTS = [
    "synthetic", "--input-size", "56", "--scale-size", "64", "--num-frames", "8",
    "--epochs", "8", "--batch-size", "16", "--lr", "0.02", "--schedule", "cosine",
    "--warmup-epochs", "1", "--dropout", "0.2", "--workers", "1", "--seed", "0",
]
# fmt: on


def main() -> int:
    pre = argparse.ArgumentParser(
        prog="train_demo.py",
        description="Train the bundled demo checkpoint (RubiksNet-Tiny, synthetic data).",
        epilog="Every other option goes to tools/train.py's parser (python tools/train.py "
        "--help); the demo's defaults: " + " ".join(DEFAULTS[1:]),
    )
    pre.add_argument("--export", help="write the best weights (+ demo metadata) here")
    pre.add_argument("--data", help="synthetic data folder (default: cache)")
    pre.add_argument("--classes", nargs="+", help="subset of the synthetic classes")
    pre.add_argument("--num-train", type=int, default=SYNTH["num_train"])
    pre.add_argument("--num-val", type=int, default=SYNTH["num_val"])
    pre.add_argument("--overwrite", action="store_true", help="replace an existing --export")
    known, rest = pre.parse_known_args()

    from rubiks_data.synthetic import SynthConfig, generate
    from rubiks_eval.argcheck import output_errors
    from rubiks_eval.cache import cache_root
    from rubiks_eval.checkpoint import load_weights, save_weights
    from rubiks_eval.training import config_from_args, train

    settings = {**SYNTH, "num_train": known.num_train, "num_val": known.num_val}
    if known.classes:
        settings["classes"] = tuple(known.classes)
    try:
        synth = SynthConfig(**settings)
    except ValueError as exc:
        pre.error(str(exc))
    name = "synthetic-train-demo" + (f"{len(known.classes)}" if known.classes else "")
    data = Path(known.data or cache_root() / name)
    cfg = config_from_args([*DEFAULTS, "--root-path", str(data), *rest])
    if known.export:
        errors = output_errors(
            {"--export": known.export},
            input_roots=[data, cfg.output],
            overwrite=known.overwrite,
        )
        if errors:
            pre.error(errors[0])
    generate(data, synth, workers=2)
    from rubiks_eval.builders import build_dataset

    train_set, val_set = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    from rubiks_eval.builders import build_model

    model, model_meta = build_model(cfg, dataset=train_set)
    source = type(model).__module__
    meta = {
        "arch": "rubiksnet_tiny",
        "tier": "tiny",
        "variant": "rubiks3d",
        "num_classes": train_set.num_classes,
        "num_frames": cfg.num_frames,
        "synthetic": synth.to_json(),
        "eval": {
            "num_frames": cfg.num_frames,
            "crop_size": cfg.input_size,
            "scale_size": cfg.scale_size,
        },
        "class_names": getattr(train_set, "class_names", None),
        "train_command": "python tools/train_demo.py " + " ".join(sys.argv[1:]),
        "model_source": source,
        **{k: v for k, v in model_meta.items() if k == "initialised_from"},
    }
    tic = time.time()
    summary = train(cfg, model=model, train_set=train_set, val_set=val_set, metadata=meta)
    hours = (time.time() - tic) / 3600
    print(json.dumps({"best_val_top1": summary["best_val_top1"], "hours": hours}))
    if known.export:
        best = Path(cfg.output) / "best.safetensors"
        from rubiks_eval.checkpoint import weights_metadata

        final_meta = {
            **weights_metadata(best),
            "train_hours_last_session": round(hours, 3),
        }
        final_meta.pop("train_config", None)
        # float16 storage keeps the bundled file under 5 MB (1.9 M parameters)
        state = {k: v.half() if v.is_floating_point() else v for k, v in load_weights(best).items()}
        save_weights(known.export, state, {**final_meta, "dtype": "float16"})
        print(f"exported {best} -> {known.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
