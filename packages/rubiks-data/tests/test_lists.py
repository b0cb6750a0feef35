"""List and annotation parsing: errors name the file and the line (or entry)."""

from __future__ import annotations

import json

import pytest

from rubiks_data import ListFileError
from rubiks_data.datasets import check_template
from rubiks_data.lists import (
    read_class_names,
    read_frame_list,
    read_ssv2_annotations,
    read_ssv2_labels,
    read_video_list,
    ssv2_class_name,
)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_frame_list_ok(tmp_path):
    p = write(tmp_path, "l.txt", "100 45 3\n\nabc/def 3 0\nwith space 12 1\nzero 0 2\n")
    recs = read_frame_list(p, num_classes=174)
    assert [(r.video_id, r.num_frames, r.label) for r in recs] == [
        ("100", 45, 3), ("abc/def", 3, 0), ("with space", 12, 1), ("zero", 0, 2)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1 2 3\n4 5\n", 2, "expected '<video_id> <num_frames> <label>'"),
        ("1 2 3\n4 x 1\n", 2, "num_frames must be an integer"),
        ("1 2 three\n", 1, "label must be an integer"),
        ("1 -2 3\n", 1, "num_frames must be >= 0"),
        ("1 2 3\n2 2 174\n", 2, "label 174 out of range [0, 174)"),
        ("1 2 -1\n", 1, "label -1 out of range"),
        ("a 2 3\nb 2 3\na 5 1\n", 3, "listed twice (first on line 1)"),
    ],
)
def test_frame_list_errors(tmp_path, text, line, message):
    p = write(tmp_path, "bad.txt", text)
    with pytest.raises(ListFileError) as info:
        read_frame_list(p, num_classes=174)
    assert str(info.value).startswith(f"{p}:{line}: ")
    assert message in str(info.value)


def test_empty_and_missing_lists(tmp_path):
    with pytest.raises(ListFileError, match="empty list"):
        read_frame_list(write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(FileNotFoundError, match="list file not found"):
        read_frame_list(tmp_path / "nope.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ListFileError, match="not UTF-8"):
        read_frame_list(tmp_path / "bin.txt")


def test_video_lists(tmp_path):
    txt = write(tmp_path, "v.txt", "a/b c.mp4 1\nd.webm 0\n")
    assert [(r.path, r.label) for r in read_video_list(txt)] == [("a/b c.mp4", 1), ("d.webm", 0)]
    csv_ = write(tmp_path, "v.csv", 'path,label\nx.mp4,2\n"y, z.webm",0\n')
    assert [(r.path, r.label) for r in read_video_list(csv_)] == [("x.mp4", 2), ("y, z.webm", 0)]
    with pytest.raises(ListFileError, match=r"v2.csv:2: expected '<path> <label>'"):
        read_video_list(write(tmp_path, "v2.csv", "x.mp4,1\ny.mp4\n"))
    # a malformed first row is an error, not a header dropped in silence
    for first in ("videos/7.webm,two", "videos/7.webm,1.0", "clip7,1.0"):
        with pytest.raises(ListFileError, match=r"first.csv:1: "):
            read_video_list(write(tmp_path, "first.csv", f"{first}\nvideos/8.webm,0\n"))
    with pytest.raises(ListFileError, match=r"v3.txt:1: label 5 out of range \[0, 3\)"):
        read_video_list(write(tmp_path, "v3.txt", "x.mp4 5\n"), num_classes=3)


def test_ssv2_json(tmp_path):
    labels = {"Moving something up": "0", "Pushing something from left to right": "1"}
    lp = write(tmp_path, "labels.json", json.dumps(labels))
    entries = [
        {"id": "7", "template": "Pushing [something] from left to right", "placeholders": ["x"]},
        {"id": 8, "template": "Moving [something] up", "label": "y", "placeholders": ["y"]},
    ]
    ap = write(tmp_path, "validation.json", json.dumps(entries))
    lab = read_ssv2_labels(lp)
    recs = read_ssv2_annotations(ap, lab)
    assert [(r.video_id, r.label) for r in recs] == [("7", 1), ("8", 0)]
    assert read_class_names(lp) == ["Moving something up", "Pushing something from left to right"]
    names = write(tmp_path, "category.txt", "Holding\n\nPushing\n")
    assert read_class_names(names) == ["Holding", "Pushing"]
    twice = write(tmp_path, "twice.txt", "Holding\nPushing\n\n Holding \n")
    with pytest.raises(
        ListFileError, match=r"twice.txt:4: class 'Holding' is named again \(first on line 1\)"
    ):
        read_class_names(twice)
    assert (
        ssv2_class_name("Putting [something] into [something]")
        == "Putting something into something"
    )


def test_ssv2_json_errors(tmp_path):
    lp = write(tmp_path, "labels.json", json.dumps({"Moving something up": "0"}))
    lab = read_ssv2_labels(lp)
    bad = write(
        tmp_path,
        "v.json",
        json.dumps(
            [
                {"id": "1", "template": "Moving [something] up"},
                {"id": "2", "template": "Flying [something]"},
            ]
        ),
    )
    with pytest.raises(ListFileError, match=r"v.json: entry 2 \(id '2'\): unknown template"):
        read_ssv2_annotations(bad, lab)
    with pytest.raises(ListFileError, match=r"t.json:2: invalid JSON"):
        read_ssv2_annotations(write(tmp_path, "t.json", "[\n{oops}\n]"), lab)
    with pytest.raises(ListFileError, match="no 'template'"):
        read_ssv2_annotations(write(tmp_path, "u.json", json.dumps([{"id": "3"}])), lab)
    recs = read_ssv2_annotations(tmp_path / "u.json", lab, allow_unlabeled=True)
    assert recs[0].label == -1
    with pytest.raises(ListFileError, match="empty list"):
        read_ssv2_annotations(write(tmp_path, "e.json", "[]"), lab)
    with pytest.raises(ListFileError, match=r"not 0\.\.1"):
        read_ssv2_labels(write(tmp_path, "l2.json", json.dumps({"a": "0", "b": "2"})))
    with pytest.raises(ListFileError, match="not an integer"):
        read_ssv2_labels(write(tmp_path, "l3.json", json.dumps({"a": "zero"})))


@pytest.mark.parametrize("template", ["{:06d}.jpg", "img_{:05d}.jpg", "%05d.jpg", "f/{}.png"])
def test_good_templates(template):
    assert check_template(template) == template


@pytest.mark.parametrize(
    ("template", "message"),
    [("frame.jpg", "no frame-number field"), ("{:06d.jpg", "bad frame template"),
     ("{name}.jpg", "bad frame template"), ("{:s}.jpg", "bad frame template")],
)  # fmt: skip
def test_bad_templates(template, message):
    with pytest.raises(ValueError, match=message):
        check_template(template)


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffa 10 0\nb 12 1\n".encode())
    assert [r.video_id for r in read_frame_list(path)] == ["a", "b"]
