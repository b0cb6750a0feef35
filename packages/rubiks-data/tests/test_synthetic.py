"""The synthetic temporal dataset: time reversal swaps the label; reproducible; SSv2 format."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from rubiks_data.synthetic import (
    CLASSES,
    SynthConfig,
    generate,
    make_spec,
    mirror_label,
    mirror_spec,
    render_clip,
    split_labels,
    state_at,
)
from rubiks_data.synthetic.cli import main as synth_main
from rubiks_data.video import read_frames


def test_classes_come_in_mirror_pairs():
    assert len(CLASSES) == 12
    for i, c in enumerate(CLASSES):
        m = CLASSES[mirror_label(i)]
        assert (
            m.attribute == c.attribute and m.sign == -c.sign and mirror_label(mirror_label(i)) == i
        )


@pytest.mark.parametrize("label", range(12))
@pytest.mark.parametrize("seed", [0, 1])
def test_time_reversal_is_exactly_the_mirror_class(label, seed):
    rng = np.random.default_rng([seed, label])
    spec = make_spec(label, rng, 48, 32, num_frames=int(rng.integers(5, 14)))
    frames = render_clip(spec)
    mirror = mirror_spec(spec)
    assert mirror.label == mirror_label(label) and mirror_spec(mirror) == spec
    assert np.array_equal(render_clip(mirror), frames[::-1])
    assert not np.array_equal(frames[0], frames[-1])  # something does change


@pytest.mark.parametrize("label", range(12))
def test_direction_of_change_defines_the_class(label):
    spec = make_spec(label, np.random.default_rng(label), 64, 64, 16)
    cls = CLASSES[label]
    values = [getattr(state_at(spec, k), cls.attribute) for k in range(16)]
    diffs = np.diff(values)
    assert np.all(np.sign(diffs[diffs != 0]) == cls.sign) and np.any(diffs != 0)
    for other in ("x", "y", "scale", "angle", "alpha", "zoom"):
        if other != cls.attribute:
            assert len({getattr(state_at(spec, k), other) for k in range(16)}) == 1


def test_horizontal_motion_visible_in_pixels():
    spec = make_spec(0, np.random.default_rng(0), 64, 64, 16)  # left to right
    frames = render_clip(spec).astype(float)
    col = np.array(spec.color, float)
    xs = []
    for f in (frames[0], frames[-1]):
        mask = np.abs(f - col).sum(-1) < 30
        xs.append(np.nonzero(mask)[1].mean())
    assert xs[1] > xs[0] + 10


def test_split_labels_balanced_and_seeded():
    cfg = SynthConfig(num_train=120, num_val=24, seed=4)
    labels = split_labels(cfg, "train")
    assert Counter(labels) == dict.fromkeys(range(12), 10)
    assert (
        labels == split_labels(cfg, "train")
        and labels != split_labels(SynthConfig(seed=5), "train")[:120]
    )


def test_generate_ssv2_layout_and_reproducible(tmp_path):
    cfg = SynthConfig(num_train=6, num_val=4, width=32, height=32, num_frames=8, seed=9,
                      classes=("up", "down", "grow", "shrink"))  # fmt: skip
    a = generate(tmp_path / "a", cfg, progress=False)
    b = generate(tmp_path / "b", cfg, progress=False)
    labels = json.loads((a / "labels.json").read_text())
    assert labels == {"Moving something down": "0", "Moving something up": "1",
                      "Something growing": "2", "Something shrinking": "3"}  # fmt: skip
    for name in ("train.json", "validation.json", "labels.json", "meta.json"):
        assert (a / name).read_text() == (b / name).read_text()
    train = json.loads((a / "train.json").read_text())
    assert [e["id"] for e in train] == ["1", "2", "3", "4", "5", "6"]
    assert set(train[0]) == {"id", "label", "template", "placeholders"}
    val = json.loads((a / "validation.json").read_text())
    assert [e["id"] for e in val] == ["7", "8", "9", "10"]
    for e in val:
        fa = read_frames(a / "videos" / f"{e['id']}.webm", range(8))
        fb = read_frames(b / "videos" / f"{e['id']}.webm", range(8))
        assert all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(fa, fb, strict=True)
        )
        assert (
            e["label"].lower().startswith(("moving", ""))
            and e["placeholders"][0] in e["label"].lower()
        )
    # already complete: nothing rewritten
    mtime = (a / "meta.json").stat().st_mtime_ns
    generate(a, cfg, progress=False)
    assert (a / "meta.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="other settings"):
        generate(a, SynthConfig(num_train=2, num_val=2, seed=1), progress=False)


def test_resume_after_interruption(tmp_path):
    cfg = SynthConfig(num_train=4, num_val=2, width=32, height=32, num_frames=6, format="mp4")
    out = generate(tmp_path / "d", cfg, progress=False)
    ref = {p.name: p.read_bytes() for p in (out / "videos").iterdir()}
    (out / "meta.json").unlink()  # as if interrupted before the end
    (out / "videos" / "3.mp4").unlink()
    generate(out, cfg, progress=False, workers=2)
    assert {p.name: p.read_bytes() for p in (out / "videos").iterdir()} == ref
    assert not list(out.glob("videos/.*"))  # no temporary files left


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = synth_main([str(out), "--num-train", "4", "--num-val", "4", "--size", "48x32",
                     "--frames", "6-9", "--format", "mp4", "--frame-folders", "--seed", "2",
                     "--no-progress", "-j", "1"])  # fmt: skip
    assert rc == 0 and "8 clips (12 classes)" in capsys.readouterr().out
    lines = (out / "val_videofolder.txt").read_text().splitlines()
    assert len(lines) == 4
    for line in lines:
        vid, n, label = line.split()
        assert 6 <= int(n) <= 9 and len(list((out / "frames" / vid).glob("*.jpg"))) == int(n)
        assert 0 <= int(label) < 12
    assert (out / "category.txt").read_text().splitlines()[
        0
    ] == "Moving something from left to right"
    assert synth_main([str(out), "--size", "33", "--no-progress"]) == 2
    assert synth_main([str(tmp_path / "x"), "--classes", "sideways", "--no-progress"]) == 2


def test_config_validation():
    with pytest.raises(ValueError, match="even"):
        SynthConfig(width=63)
    with pytest.raises(ValueError, match="num_frames"):
        SynthConfig(num_frames=(9, 4))
    with pytest.raises(ValueError, match="format"):
        SynthConfig(format="avi")


def test_cli_refuses_bad_settings_before_writing(tmp_path, capsys):
    victim = tmp_path / "mine"
    victim.mkdir()
    (victim / "labels.json").write_text("my labels")
    args = ["--num-train", "2", "--num-val", "2", "--no-progress", "-j", "1"]
    with pytest.raises(SystemExit) as exc:
        synth_main([str(victim), *args])
    assert exc.value.code == 2
    assert "holds no synthetic dataset" in capsys.readouterr().err
    assert (victim / "labels.json").read_text() == "my labels"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        synth_main([str(a_file), *args])
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth_main([str(tmp_path / "w"), *args, "--workers", "0"])
    assert "--workers must be >= 1" in capsys.readouterr().err
    for bad, message in (("--crf=99", "crf must be in 0..63"), ("--fps=0", "fps must be >= 1")):
        assert synth_main([str(tmp_path / "new"), bad, *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    # --overwrite writes into the folder
    assert synth_main([str(victim), "--overwrite", *args]) == 0
    assert (victim / "meta.json").is_file()


def test_generate_refuses_a_folder_of_other_files(tmp_path):
    cfg = SynthConfig(num_train=2, num_val=1, width=16, height=16, num_frames=4,
                      classes=("up", "down"))  # fmt: skip
    folder = tmp_path / "mine"
    (folder / "videos").mkdir(parents=True)
    (folder / "labels.json").write_text("USER")
    (folder / "videos" / "1.webm").write_text("USERVIDEO")
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="holds no synthetic dataset"):
        generate(folder, cfg, progress=False)
    assert (folder / "labels.json").read_text() == "USER"
    # overwrite: the files generate writes are replaced, a user's video included
    generate(folder, cfg, progress=False, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep"
    assert len(read_frames(folder / "videos" / "1.webm", range(4))) == 4
    with pytest.raises(FileExistsError, match="is not a folder"):
        generate(folder / "notes.txt", cfg, progress=False)
