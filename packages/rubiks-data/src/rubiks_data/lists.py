"""Parsers for list and annotation files; every problem names the file and the line.

- Frame-folder lists (TSM): ``<video_id> <num_frames> <label>`` per line.
- Video lists: ``<path> <label>`` per line, or CSV rows ``path,label`` (optional header).
- Something-Something-V2 JSON: ``something-something-v2-labels.json`` (template text ->
  class index string) and ``train.json``/``validation.json`` (lists of
  ``{id, template, label, placeholders}``; class = template without ``[`` and ``]``).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .sample import ListFileError

__all__ = [
    "VideoRecord",
    "read_class_names",
    "read_frame_list",
    "read_ssv2_annotations",
    "read_ssv2_labels",
    "read_video_list",
    "ssv2_class_name",
]


@dataclass(frozen=True)
class VideoRecord:
    """One listed video: id, 0-based label (-1 if unlabelled), frame count or file path."""

    video_id: str
    label: int
    num_frames: int | None = None
    path: str | None = None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # a leading BOM is not text
    except FileNotFoundError:
        raise FileNotFoundError(f"list file not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ListFileError(path, None, f"not UTF-8 text ({err.reason})") from None


def _int(text: str, path: Path, line: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ListFileError(path, line, f"{what} must be an integer, got {text!r}") from None


def _check_label(
    label: int, num_classes: int | None, path: Path, line: int | None, where: str = ""
):
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ListFileError(path, line, f"{where}label {label} out of range {bound}")


def _finish(records: list[VideoRecord], path: Path) -> list[VideoRecord]:
    if not records:
        raise ListFileError(path, None, "no videos listed (empty list)")
    return records


def _check_unique(video_id: str, seen: dict[str, int], path: Path, line: int) -> None:
    if video_id in seen:
        raise ListFileError(
            path, line, f"video {video_id!r} listed twice (first on line {seen[video_id]})"
        )
    seen[video_id] = line


def read_frame_list(path: str | os.PathLike, num_classes: int | None = None) -> list[VideoRecord]:
    """Parse a TSM frame-folder list: ``<video_id> <num_frames> <label>`` per line.

    Blank lines are skipped; ids may contain spaces (the last two fields are numbers).
    ``num_frames`` may be 0 (the dataset then reports the video as having zero frames).
    """
    path = Path(path)
    records: list[VideoRecord] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(_read_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=2)
        if len(parts) != 3:
            raise ListFileError(path, n, f"expected '<video_id> <num_frames> <label>', got {raw!r}")
        vid, frames_text, label_text = parts
        frames = _int(frames_text, path, n, "num_frames")
        label = _int(label_text, path, n, "label")
        if frames < 0:
            raise ListFileError(path, n, f"num_frames must be >= 0, got {frames}")
        _check_label(label, num_classes, path, n)
        _check_unique(vid, seen, path, n)
        records.append(VideoRecord(vid, label, num_frames=frames))
    return _finish(records, path)


def read_video_list(path: str | os.PathLike, num_classes: int | None = None) -> list[VideoRecord]:
    """Parse a list of video files with labels.

    ``.csv``: rows ``path,label``; a first row of two names (no file extension in the
    first cell, no number in the second, e.g. ``path,label``) is a header. Any other
    malformed row, the first included, is an error naming its line.
    Otherwise whitespace-separated ``<path> <label>`` lines (paths may contain spaces).
    The video id is the path as written; relative paths are resolved by the dataset.
    """
    path = Path(path)
    rows: list[tuple[int, list[str]]] = []
    if path.suffix.lower() == ".csv":
        lines = _read_lines(path)
        for n, row in enumerate(csv.reader(lines), start=1):
            if row and any(cell.strip() for cell in row):
                rows.append((n, [cell.strip() for cell in row]))
        if rows and _is_header(rows[0][1]):
            rows = rows[1:]
    else:
        for n, raw in enumerate(_read_lines(path), start=1):
            if raw.strip():
                rows.append((n, raw.strip().rsplit(maxsplit=1)))
    records: list[VideoRecord] = []
    seen: dict[str, int] = {}
    for n, parts in rows:
        if len(parts) != 2 or not parts[0]:
            raise ListFileError(path, n, f"expected '<path> <label>', got {parts!r}")
        label = _int(parts[1], path, n, "label")
        _check_label(label, num_classes, path, n)
        _check_unique(parts[0], seen, path, n)
        records.append(VideoRecord(parts[0], label, path=parts[0]))
    return _finish(records, path)


def _is_header(cells: list[str]) -> bool:
    """Whether a CSV video list's first row names its columns rather than a video."""
    if len(cells) != 2 or Path(cells[0]).suffix:
        return False
    try:
        float(cells[1])
    except ValueError:
        return True
    return False


def ssv2_class_name(template: str) -> str:
    """The SSv2 class of an annotation: its template with ``[`` and ``]`` removed."""
    return template.replace("[", "").replace("]", "")


def _load_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ListFileError(path, err.lineno, f"invalid JSON: {err.msg}") from None


def read_ssv2_labels(path: str | os.PathLike) -> dict[str, int]:
    """Read ``something-something-v2-labels.json``: class text -> 0-based index.

    Indices must be integers (strings in SSv2's file) covering 0..K-1 exactly once.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not data:
        raise ListFileError(path, None, "expected a non-empty JSON object {class text: index}")
    labels: dict[str, int] = {}
    for name, value in data.items():
        try:
            labels[name] = int(value)
        except (TypeError, ValueError):
            raise ListFileError(
                path, None, f"class {name!r}: index {value!r} is not an integer"
            ) from None
    if sorted(labels.values()) != list(range(len(labels))):
        raise ListFileError(path, None, f"class indices are not 0..{len(labels) - 1}, each once")
    return labels


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names in index order: from an SSv2 labels JSON, or one name per text line
    (blank lines skipped; a name given twice is an error naming both lines)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        labels = read_ssv2_labels(path)
        return sorted(labels, key=labels.__getitem__)
    names: list[str] = []
    first_line: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ListFileError(
                path, n, f"class {name!r} is named again (first on line {first_line[name]})"
            )
        first_line[name] = n
        names.append(name)
    if not names:
        raise ListFileError(path, None, "no class names")
    return names


def read_ssv2_annotations(
    path: str | os.PathLike, labels: dict[str, int], allow_unlabeled: bool = False
) -> list[VideoRecord]:
    """Read an SSv2 ``train.json``/``validation.json``: records with id and class index.

    An entry without ``template`` (SSv2's test split) gets label -1 when
    ``allow_unlabeled``; otherwise it is an error. Errors name the entry (1-based) and id.
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise ListFileError(path, None, "expected a JSON list of {id, template, ...} entries")
    records: list[VideoRecord] = []
    seen: dict[str, int] = {}
    for n, entry in enumerate(data, start=1):
        if not isinstance(entry, dict) or "id" not in entry:
            raise ListFileError(path, None, f"entry {n}: expected an object with an 'id'")
        vid = str(entry["id"])
        where = f"entry {n} (id {vid!r}): "
        if "template" not in entry:
            if not allow_unlabeled:
                raise ListFileError(path, None, f"{where}no 'template' (unlabelled entry)")
            label = -1
        else:
            template = entry["template"]
            if not isinstance(template, str):
                raise ListFileError(path, None, f"{where}template must be a string")
            name = ssv2_class_name(template)
            if name not in labels:
                raise ListFileError(
                    path, None, f"{where}unknown template {template!r} (class {name!r})"
                )
            label = labels[name]
        if vid in seen:
            raise ListFileError(path, None, f"{where}id listed twice (first in entry {seen[vid]})")
        seen[vid] = n
        records.append(VideoRecord(vid, label))
    return _finish(records, path)
