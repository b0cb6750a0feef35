"""``rubiks-eval`` / ``python -m rubiks_eval``: evaluate a checkpoint by the TSM protocol.

Run under ``torchrun --nproc_per_node N -m rubiks_eval ...`` to shard the videos over N
processes (NCCL on GPUs, gloo on CPU); the metrics equal those of one process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .distributed import DistEnv, setup_distributed
from .evaluate import EvalResult, evaluate

if TYPE_CHECKING:
    import torch

__all__ = ["build_parser", "check_args", "main", "run"]

EPILOG = """\
examples:
  rubiks-eval ssv2 --root-path data/ssv2 --pretrained ssv2_tiny.pth.tar --protocol 2clip
  rubiks-eval --val-list val.txt --root-path frames/ --pretrained model.safetensors
  torchrun --nproc_per_node 4 -m rubiks_eval ssv2 --root-path data/ssv2 \\
      --pretrained ssv2_large.safetensors --protocol 2clip --output results.json
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(
        prog="rubiks-eval",
        description="Evaluate a RubiksNet checkpoint on a video dataset (TSM protocol: "
        "1-clip center crop, or 2 clips x 3 crops); the video score is the mean of the raw "
        "logits over views. Every listed video counts; unreadable ones are named.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dataset",
        nargs="?",
        default=None,
        help="dataset name: ssv2, ssv1, kinetics, ucf101, hmdb51, synthetic, or omit and "
        "give --val-list (frame-folder list file or SSv2-style JSON annotations)",
    )
    p.add_argument("--root-path", help="dataset root: videos or extracted frame folders")
    p.add_argument(
        "--val-list",
        "--annotations",
        dest="val_list",
        help="list file '<video_id> <num_frames> <label>' or SSv2 validation JSON",
    )
    p.add_argument("--labels-file", help="class list (e.g. something-something-v2-labels.json)")
    p.add_argument("--split", default="val", help="split for named datasets (default: val)")
    p.add_argument("--template", help="frame file name template, e.g. '{:06d}.jpg'")
    p.add_argument(
        "--pretrained",
        "--weights",
        dest="pretrained",
        required=True,
        help="checkpoint file (.safetensors, reference .pth.tar) or timm name[.tag]",
    )
    p.add_argument("--arch", help="timm model name when the checkpoint does not say it")
    p.add_argument(
        "--protocol",
        choices=["1clip", "2clip", "dense"],
        default="1clip",
        help="1clip: 1 clip, centre crop; 2clip: 2 clips x 3 crops (the headline numbers); "
        "dense: 10 dense clips x 3 crops (TSM's Kinetics test)",
    )
    p.add_argument("--crop-size", type=int, default=224, help="crop side (TSM --full_res: 256)")
    p.add_argument(
        "--scale-size",
        type=int,
        default=None,
        help="short side after resizing (default 256 / 224 x crop size, at least the crop)",
    )
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    p.add_argument("--batch-size", "-b", type=int, default=8, help="videos per batch")
    p.add_argument("-j", "--workers", type=int, default=4, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if any)")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 CUDA, bf16 CPU)")
    p.add_argument(
        "--form",
        choices=FORMS,
        default="auto",
        help="how the model runs: fused (batch norms folded into the convolutions, BN + "
        "ReLU inside the shift kernel; equal up to rounding, faster on GPUs), eager (the "
        "model as built) or auto (default: fused on CUDA, eager elsewhere)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N listed videos")
    p.add_argument("--output", "-o", help="write results JSON here (atomically)")
    p.add_argument("--per-video", action="store_true", help="add per-video predictions to JSON")
    p.add_argument("--save-scores", help="write per-video scores (.npz, mean logits)")
    p.add_argument("--confusion", help="write a confusion-matrix PNG (needs matplotlib)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing --output/--save-scores/--confusion files (never an input)",
    )
    p.add_argument(
        "--allow-class-mismatch",
        action="store_true",
        help="evaluate although the checkpoint's class count or class names differ from "
        "the dataset's (default: an error; the same names in another order are remapped)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


FORMS = ("auto", "fused", "eager")


def model_form(form: str, model: Any, device: torch.device) -> str:
    """The form ``form`` resolves to for ``model`` on ``device``: "auto" is fused for a
    RubiksNet on CUDA (measured faster there) and eager otherwise."""
    from rubiks_models import RubiksNet

    if form == "auto":
        return "fused" if device.type == "cuda" and isinstance(model, RubiksNet) else "eager"
    if form == "fused" and not isinstance(model, RubiksNet):
        raise ValueError(f"--form fused needs a RubiksNet, got {type(model).__name__}")
    return form


def evaluate_from_args(
    model: torch.nn.Module,
    dataset: Any,
    args: argparse.Namespace,
    env: DistEnv,
    desc: str,
    amp: bool = False,
) -> EvalResult:
    """``evaluate`` with the command line's batch size, workers and progress setting."""
    return evaluate(
        model,
        dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        env=env,
        amp=amp,
        progress=args.progress,
        desc=desc,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate as configured by ``args``; returns the results document (on every rank)."""
    from .builders import build_eval_dataset, load_model, match_classes
    from .report import format_summary, results_dict, save_confusion_png, save_results, save_scores

    with setup_distributed(args.device) as env:
        dataset, class_names = build_eval_dataset(args)
        model, info = load_model(
            args.pretrained, arch=args.arch, num_frames=args.num_frames, num_classes=None
        )
        notice = match_classes(
            model, info, dataset, allow_mismatch=getattr(args, "allow_class_mismatch", False)
        )
        if args.limit is not None:
            dataset = _Head(dataset, args.limit)
        model.to(env.device).eval()
        form = model_form(args.form, model, env.device)
        if form == "fused":
            from rubiks_models.fused import fuse_model

            model = fuse_model(model)
        if env.is_main and notice:
            print(notice, flush=True)
        if env.is_main:
            print(
                f"model {info.get('arch', '?')} ({info.get('num_classes', '?')} classes) from "
                f"{args.pretrained}; {len(dataset)} videos, protocol {args.protocol}, "
                f"{args.num_frames} frames, crop {args.crop_size}, device {env.device}, "
                f"{form} form" + (f", {env.world_size} processes" if env.distributed else ""),
                flush=True,
            )
        result = evaluate_from_args(model, dataset, args, env, args.protocol, amp=args.amp)
        config = {
            k: v
            for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, type(None)))
        }
        config["model"] = info
        config["form"] = form
        doc = results_dict(result, config, per_video=args.per_video)
        if env.is_main:
            print(format_summary(result, title=f"== {args.protocol} =="), flush=True)
            if args.output:
                save_results(args.output, result, config, args.per_video)
                print(f"results written to {args.output}")
            if args.save_scores:
                save_scores(args.save_scores, result)
                print(f"scores written to {args.save_scores}")
            if args.confusion:
                save_confusion_png(args.confusion, result, class_names)
                print(f"confusion matrix written to {args.confusion}")
        return doc


class _Head:
    """The first ``n`` items of a dataset."""

    def __init__(self, dataset: Any, n: int) -> None:
        if n < 1:
            raise ValueError(f"--limit must be >= 1, got {n}")
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse impossible options and unsafe output paths (``parser.error``) before any work."""
    from .argcheck import crop_error, device_error, module_error, output_errors

    if args.dataset is None and args.val_list is None:
        parser.error("give a dataset name or --val-list")
    for flag, value, low in (
        ("--limit", args.limit, 1),
        ("--num-frames", args.num_frames, 1),
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--crop-size", args.crop_size, 1),
        ("--scale-size", args.scale_size, 1),
    ):
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    error = crop_error("--crop-size", args.crop_size, args.scale_size)
    if error:
        parser.error(error)
    if args.protocol == "dense" and args.num_frames > 64:
        parser.error(f"--protocol dense takes at most 64 frames per clip, got {args.num_frames}")
    for path, flag in ((args.val_list, "--val-list"), (args.labels_file, "--labels-file")):
        if path and not Path(path).expanduser().is_file():
            parser.error(f"{flag} {path}: no such file")
    if args.root_path and not Path(args.root_path).expanduser().is_dir():
        parser.error(f"--root-path {args.root_path}: no such folder")
    error = device_error(args.device)
    if error is None and args.confusion:
        error = module_error("--confusion", "matplotlib", "plot")
    if error:
        parser.error(error)
    pretrained = Path(args.pretrained).expanduser()
    errors = output_errors(
        {"--output": args.output, "--save-scores": args.save_scores, "--confusion": args.confusion},
        inputs=[pretrained, args.val_list, args.labels_file],
        input_roots=[args.root_path, pretrained],
        overwrite=args.overwrite,
    )
    if errors:
        parser.error(errors[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        run(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"rubiks-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
