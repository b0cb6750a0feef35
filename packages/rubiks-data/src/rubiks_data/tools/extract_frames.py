"""``rubiks-extract-frames SRC OUT``: decode videos into TSM frame folders at short side 256.

Each video ``SRC/<rel>/<name>.<ext>`` becomes ``OUT/<rel>/<name>/<template>`` (1-based
frame numbers). A folder is written under a temporary name and renamed when complete, so
an interrupted run resumes where it stopped (finished folders are skipped). Videos that
cannot be read are listed (with the reason) in ``OUT/extract_failures.txt``, not skipped
silently.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..datasets import _format, check_template
from ..fileio import atomic_write_text, replace_dir, temp_dir_for
from ..process_pool import process_pool
from ..transforms import resize_frame
from ..video import DecodeError, VideoReader

__all__ = ["extract_video", "find_videos", "main"]


def find_videos(src: Path, extensions: Sequence[str]) -> list[Path]:
    """Video files under ``src`` (recursively) with one of ``extensions``, sorted."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in exts and p.is_file())


def extract_video(
    video: Path,
    folder: Path,
    template: str = "{:06d}.jpg",
    short_side: int | None = 256,
    quality: int = 95,
) -> int:
    """Write all frames of ``video`` into ``folder`` (atomically); returns the frame count."""
    tmp = temp_dir_for(folder)
    try:
        with VideoReader(video, threads=1) as reader:
            n = 0
            for n, img in enumerate(reader.iter_frames(), start=1):
                resize_frame(img, short_side).save(tmp / _format(template, n), quality=quality)
        if n == 0:
            raise DecodeError("zero frames")
        replace_dir(tmp, folder)
        return n
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _job(args: tuple) -> tuple[str, int | None, str | None]:
    video, folder, template, short_side, quality = args
    try:
        return (
            str(video),
            extract_video(Path(video), Path(folder), template, short_side, quality),
            None,
        )
    except DecodeError as err:
        return str(video), None, str(err)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rubiks-extract-frames",
        description="Decode videos into frame folders (short side resized with PIL bilinear); "
        "resumable.",
    )
    p.add_argument("src", help="folder of videos (searched recursively)")
    p.add_argument("out", help="output root: OUT/<video_id>/<template>")
    p.add_argument("--template", default="{:06d}.jpg", help="frame file name (SSv2: {:06d}.jpg)")
    p.add_argument("--short-side", type=int, default=256, help="0 keeps the original size")
    p.add_argument("--ext", nargs="+", default=[".webm", ".mp4"], help="video extensions")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("-j", "--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from tqdm.auto import tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_template(args.template)
    except ValueError as err:
        parser.error(str(err))
    src, out = Path(args.src).expanduser(), Path(args.out).expanduser()
    if not src.is_dir():
        parser.error(f"no folder {src}")
    if args.workers < 1 or args.short_side < 0 or not 1 <= args.quality <= 100:
        parser.error("-j must be >= 1, --short-side >= 0 and --quality in 1..100")
    if out.exists() and not out.is_dir():
        parser.error(f"output {out} exists and is not a folder")
    if out.resolve() == src.resolve():
        parser.error(f"output {out} is the video folder; choose another folder")
    videos = find_videos(src, args.ext)
    jobs, done = [], 0
    for v in videos:
        folder = out / v.relative_to(src).with_suffix("")
        if folder.is_dir():
            done += 1
        else:
            jobs.append((str(v), str(folder), args.template, args.short_side or None, args.quality))
    print(f"{len(videos)} videos: {done} already extracted, {len(jobs)} to do")
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(jobs), unit="video", desc="extract", disable=not args.progress)
    if args.workers > 1 and len(jobs) > 1:
        with process_pool(args.workers) as pool:
            results = pool.map(_job, jobs, chunksize=4)
            for video, _, err in results:
                if err:
                    failures.append((video, err))
                bar.update()
    else:
        for job in jobs:
            video, _, err = _job(job)
            if err:
                failures.append((video, err))
            bar.update()
    bar.close()
    report = out / "extract_failures.txt"
    if failures:
        atomic_write_text(report, "".join(f"{v}\t{r}\n" for v, r in failures))
        print(f"{len(failures)} videos could not be read; see {report}", file=sys.stderr)
        return 1
    report.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
