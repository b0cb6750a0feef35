"""``rubiks-ssv2-lists ANNOTATIONS FRAMES``: TSM list files from SSv2's JSON annotations.

Writes ``train_videofolder.txt`` and ``val_videofolder.txt`` (``<id> <num_frames>
<label>``) and ``category.txt`` (class names in index order), as TSM's
``gen_label_sthv2.py`` does: the class of an entry is its template without square
brackets, the frame count is the number of files in ``FRAMES/<id>``. Every annotated video
is listed; one without a frame folder gets 0 frames (the dataset then reports it) and a
warning. Files are written atomically; rerunning is safe.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..fileio import atomic_write_text
from ..lists import read_ssv2_annotations, read_ssv2_labels
from ..registry import find_ssv2_annotations
from ..sample import ListFileError

__all__ = ["count_frame_files", "main", "write_lists"]


def count_frame_files(folder: Path) -> int:
    """Number of files in a frame folder (0 when it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.is_file())
    except FileNotFoundError:
        return 0


def write_lists(
    annotations: Path, frames: Path, out: Path, progress: bool = True
) -> dict[str, tuple[int, int]]:
    """Write the lists; returns ``{split: (videos, videos without frames)}``."""
    from tqdm.auto import tqdm

    summary = {}
    labels_path = None
    for split, name in (("train", "train"), ("val", "val")):
        found = find_ssv2_annotations(split, annotations)
        if found is None:
            raise FileNotFoundError(f"no SSv2 {split} annotations + labels JSON in {annotations}")
        split_file, labels_path = found
        labels = read_ssv2_labels(labels_path)
        records = read_ssv2_annotations(split_file, labels)
        lines, missing = [], 0
        for rec in tqdm(records, desc=f"{split} list", unit="video", disable=not progress):
            n = count_frame_files(frames / rec.video_id)
            missing += n == 0
            lines.append(f"{rec.video_id} {n} {rec.label}\n")
        atomic_write_text(out / f"{name}_videofolder.txt", "".join(lines))
        summary[split] = (len(records), missing)
    names = sorted(labels, key=labels.__getitem__)
    atomic_write_text(out / "category.txt", "".join(f"{n}\n" for n in names))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="rubiks-ssv2-lists",
        description="Write TSM list files (train/val_videofolder.txt, category.txt) from "
        "Something-Something-V2 JSON annotations and extracted frame folders.",
    )
    p.add_argument(
        "annotations", help="folder with something-something-v2-{labels,train,validation}.json"
    )
    p.add_argument("frames", help="frame folders root (FRAMES/<id>/...)")
    p.add_argument("--out", help="where to write the lists (default: the annotations folder)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    out = Path(args.out or args.annotations)
    try:
        summary = write_lists(Path(args.annotations), Path(args.frames), out, args.progress)
    except (FileNotFoundError, ListFileError) as err:
        print(f"rubiks-ssv2-lists: error: {err}", file=sys.stderr)
        return 2
    for split, (n, missing) in summary.items():
        note = f" ({missing} without frames, listed with 0 frames)" if missing else ""
        print(f"{split}: {n} videos{note} -> {out / f'{split}_videofolder.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
