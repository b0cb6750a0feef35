"""Console tools: frame extraction (resumable) and SSv2 list files."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from PIL import Image

from rubiks_data import build_dataset
from rubiks_data.tools.extract_frames import main as extract_main
from rubiks_data.tools.ssv2_lists import main as lists_main
from rubiks_data.video import read_frames


def test_extract_frames_and_lists(synth_webm, tmp_path, capsys):
    src = tmp_path / "videos"
    shutil.copytree(synth_webm / "videos", src)
    out = tmp_path / "frames"
    assert extract_main([str(src), str(out), "--no-progress", "-j", "2"]) == 0
    assert "36 to do" in capsys.readouterr().out
    files = sorted((out / "25").iterdir())
    assert [f.name for f in files][:2] == ["000001.jpg", "000002.jpg"] and len(files) == 16
    img = Image.open(files[0])
    assert img.size == (341, 256)  # 64x48 -> short side 256
    ref = read_frames(src / "25.webm", [0])[0].resize((341, 256), Image.BILINEAR)
    diff = np.abs(np.asarray(img, int) - np.asarray(ref, int))
    assert diff.mean() < 3  # JPEG of the same frame

    # resumable: finished folders are skipped
    assert extract_main([str(src), str(out), "--no-progress"]) == 0
    assert "36 already extracted, 0 to do" in capsys.readouterr().out

    # a broken video is reported (exit 1, failures file), never half-extracted
    (src / "bad.webm").write_bytes(b"\x1a\x45\xdf\xa3 garbage")
    assert extract_main([str(src), str(out), "--no-progress"]) == 1
    assert "bad.webm" in (out / "extract_failures.txt").read_text()
    assert not (out / "bad").exists()

    # lists from the SSv2-style JSON; a video without frames is listed with 0 frames
    shutil.rmtree(out / "36")
    assert lists_main([str(synth_webm), str(out), "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "val: 12 videos (1 without frames" in printed and "train: 24 videos" in printed
    val = (tmp_path / "val_videofolder.txt").read_text().splitlines()
    assert val[0].split()[:2] == ["25", "16"] and val[-1].split()[:2] == ["36", "0"]
    assert val == [
        f"{a.split()[0]} {'0' if a.split()[0] == '36' else a.split()[1]} {a.split()[2]}"
        for a in (synth_webm / "val_videofolder.txt").read_text().splitlines()
    ]
    ds = build_dataset("somethingv2", out, "val", list_file=tmp_path / "val_videofolder.txt",
                       class_names=tmp_path / "category.txt")  # fmt: skip
    assert ds.num_classes == 12 and ds[11].error == "zero frames"
    s = ds[0]
    assert s.error is None and s.clip.shape == (1, 8, 3, 224, 224)
    video = build_dataset("synthetic", synth_webm, "val")[0].clip
    assert (s.clip - video).abs().mean() < 0.05 and torch.isfinite(s.clip).all()


def _code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # parser.error
        return exc.code


def test_tool_argument_errors(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for argv, message in (
        ([str(tmp_path / "none"), str(tmp_path / "o")], "no folder"),
        ([str(tmp_path), str(tmp_path / "o"), "--template", "x.jpg"], "bad frame template"),
        ([str(tmp_path), str(tmp_path / "o"), "-j", "0"], "-j must be >= 1"),
        ([str(tmp_path), str(a_file)], "is not a folder"),
        ([str(tmp_path), str(tmp_path)], "is the video folder"),
    ):
        assert _code(extract_main, argv) == 2
        err = capsys.readouterr().err
        assert "rubiks-extract-frames: error: " in err and message in err
    assert a_file.read_text() == "x"
    assert lists_main([str(tmp_path), str(tmp_path)]) == 2
    assert "no SSv2 train annotations" in capsys.readouterr().err


def test_tool_workers_are_spawned_not_forked():
    """The tools' worker processes start fresh: a forked child of a threaded process can
    hang on a lock held at the fork."""
    from rubiks_data.process_pool import process_pool

    with process_pool(1) as pool:
        assert pool._mp_context.get_start_method() == "spawn"
        assert pool.submit(sum, [1, 2]).result(timeout=60) == 3
