"""Data-loading throughput (clips/s) of rubiks-data's datasets through a DataLoader.

Generates SSv2-like ``.webm`` videos (default 426x240, 48 frames = 4 s at 12 fps, VP9) with
the synthetic generator, optionally their frame folders at short side 256, and measures
videos per second for the ``1clip`` and ``2clip`` protocols (8 frames, resize to short side
256, 224 crops, normalised) with 0 and 2 DataLoader workers. Prints a Markdown table.
A maintainer's script (not installed with the package):

    python packages/rubiks-data/benchmarks/bench_loading.py [--frame-folders] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rubiks_data.fileio import atomic_write_json
from rubiks_data.registry import build_dataset
from rubiks_data.sample import collate_samples
from rubiks_data.synthetic import SynthConfig, generate
from rubiks_data.tools.extract_frames import extract_video
from rubiks_data.video import VideoReader

__all__ = ["main", "measure"]


def measure(dataset, workers: int, repeats: int, batch_size: int = 1) -> float:
    """Videos per second over ``repeats`` passes (after one warm-up pass)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_samples,
        persistent_workers=workers > 0,
    )
    for batch in loader:  # warm-up: worker start, file cache
        assert not batch.failures, batch.failures
    start = time.perf_counter()
    n = 0
    for _ in range(repeats):
        for batch in loader:
            n += len(batch.video_ids)
    return n / (time.perf_counter() - start)


def _decode_only(root: Path, ids: list[str], indices_of, repeats: int) -> float:
    """Videos per second for demuxing + decoding + RGB conversion only (one process)."""

    def one_pass() -> None:
        for vid in ids:
            with VideoReader(root / "videos" / f"{vid}.webm") as r:
                r.frames(indices_of(r.num_frames))

    one_pass()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    return len(ids) * repeats / (time.perf_counter() - start)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=24, help="number of videos (default 24)")
    p.add_argument("--size", default="426x240", help="video WxH (default 426x240, like SSv2)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the videos")
    p.add_argument("--frame-folders", action="store_true", help="also time JPEG frame folders")
    p.add_argument("--dir", help="keep the generated videos here (default: a temp folder)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        cfg = SynthConfig(
            num_train=0, num_val=args.videos, width=w, height=h, num_frames=args.frames, seed=0
        )
        t0 = time.perf_counter()
        generate(root, cfg, workers=min(2, os.cpu_count() or 1), progress=False)
        took = time.perf_counter() - t0
        print(f"generated {args.videos} videos {w}x{h}x{args.frames} in {took:.1f} s")
        rows = []
        for protocol in ("1clip", "2clip"):
            ds = build_dataset("synthetic", root, "val", protocol=protocol,
                               num_segments=args.num_segments)  # fmt: skip
            decode = _decode_only(
                root,
                ds.video_ids,
                lambda n, t=ds.transform: t.indices(n, args.num_segments),
                args.repeats,
            )
            for workers in args.workers:
                rate = measure(ds, workers, args.repeats)
                rows.append(("webm", protocol, workers, rate, rate * ds.num_views, decode))
        if args.frame_folders:
            for vid in build_dataset("synthetic", root, "val").video_ids:
                extract_video(root / "videos" / f"{vid}.webm", root / "frames" / vid)
            (root / "val_videofolder.txt").write_text(
                "".join(f"{v} {args.frames} 0\n" for v in ds.video_ids)
            )
            for protocol in ("1clip", "2clip"):
                ds = build_dataset("synthetic", root, "val", video=False, protocol=protocol,
                                   num_segments=args.num_segments, num_classes=12)  # fmt: skip
                for workers in args.workers:
                    rate = measure(ds, workers, args.repeats)
                    rows.append(("jpg", protocol, workers, rate, rate * ds.num_views, None))
    info = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "video": f"{w}x{h}, {args.frames} frames, VP9 webm",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(f"\n{info['date']}, {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{info['video']}, {args.num_segments} frames per clip, "
          f"load average {info['load_average_1min']}\n")  # fmt: skip
    print("| source | protocol | workers | clips/s | views/s | decode-only clips/s |")
    print("|---|---|---|---|---|---|")
    for src, prot, wk, rate, views, dec in rows:
        dec_s = f"{dec:.1f}" if dec is not None else "-"
        print(f"| {src} | {prot} | {wk} | {rate:.1f} | {views:.1f} | {dec_s} |")
    if args.json:
        keys = ("source", "protocol", "workers", "clips_per_s", "views_per_s", "decode_only")
        doc = {**info, "rows": [dict(zip(keys, r, strict=True)) for r in rows]}
        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
