"""rubiks-eval refuses user mistakes before any work, never destroys a file, and never
scores a checkpoint against a dataset of other classes without saying so."""

from __future__ import annotations

import json
import shutil

import torch

from rubiks_eval.cli import main

ARGS = ["--num-frames", "4", "--crop-size", "24", "-j", "0", "-b", "4", "--no-progress"]


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # parser.error
        return exc.code


def _base(data, ckpt, *extra):
    return ["synthetic", "--root-path", str(data), "--pretrained", str(ckpt), *ARGS, *extra]


def _refused(capsys, argv, message) -> str:
    assert _run(argv) == 2, argv
    captured = capsys.readouterr()
    assert f"rubiks-eval: error: {message}" in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert "top-1" not in captured.out  # nothing was evaluated
    return captured.err


def test_relative_root_path_reads_every_video(tiny_synthetic, tmp_path, monkeypatch):
    data, ckpt = tiny_synthetic
    monkeypatch.chdir(data.parent)
    out = tmp_path / "r.json"
    assert main(_base(data.name, ckpt, "--limit", "3", "--output", str(out))) == 0
    assert json.loads(out.read_text())["metrics"]["num_failed"] == 0


def test_outputs_never_replace_inputs_or_each_other(tiny_synthetic, tmp_path, capsys):
    data, ckpt = tiny_synthetic
    video = next((data / "videos").iterdir())
    before = ckpt.read_bytes(), video.read_bytes()
    _refused(capsys, _base(data, ckpt, "--save-scores", str(ckpt)), "--save-scores")
    _refused(capsys, _base(data, ckpt, "--save-scores", str(ckpt), "--overwrite"), "--save-scores")
    _refused(
        capsys, _base(data, ckpt, "--output", str(video), "--overwrite"), "--output"
    )  # a dataset file, even with --overwrite
    same = str(tmp_path / "x")
    _refused(capsys, _base(data, ckpt, "--output", same, "--save-scores", same), "--save-scores")
    assert (ckpt.read_bytes(), video.read_bytes()) == before
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    _refused(capsys, _base(data, ckpt, "--output", str(existing)), "--output")
    assert existing.read_text() == "keep"
    _refused(capsys, _base(data, ckpt, "--output", str(tmp_path)), "--output")  # a folder
    assert main(_base(data, ckpt, "--limit", "2", "--output", str(existing), "--overwrite")) == 0
    assert json.loads(existing.read_text())["metrics"]["num_videos"] == 2


def test_bad_options_are_one_line_errors_before_work(tiny_synthetic, capsys, monkeypatch):
    data, ckpt = tiny_synthetic
    _refused(capsys, _base(data, ckpt, "--limit", "0"), "--limit must be >= 1")
    _refused(
        capsys,
        _base(data, ckpt, "--crop-size", "100", "--scale-size", "64"),
        "--crop-size 100 is larger than --scale-size 64",
    )
    _refused(
        capsys,
        _base(data, ckpt, "--protocol", "dense", "--num-frames", "65"),
        "--protocol dense takes at most 64 frames per clip",
    )
    _refused(capsys, _base(data, ckpt, "--device", "gpu9"), "--device 'gpu9' is not a device")
    if not torch.cuda.is_available():
        _refused(capsys, _base(data, ckpt, "--device", "cuda"), "--device cuda: CUDA is not")
    import rubiks_eval.argcheck as argcheck

    real = argcheck.importlib.util.find_spec
    monkeypatch.setattr(
        argcheck.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    _refused(capsys, _base(data, ckpt, "--confusion", "c.png"), "--confusion needs matplotlib")


def test_class_count_mismatch_is_an_error_unless_allowed(tiny_synthetic, tmp_path, capsys):
    import timm
    from rubiks_models.weights import save_weights

    data, _ = tiny_synthetic
    four = tmp_path / "four.safetensors"
    save_weights(timm.create_model("rubiksnet_tiny", num_classes=4, num_frames=4), four)
    err = _refused(capsys, _base(data, four), "")
    assert "has 4 classes but the dataset has 12" in err and "--allow-class-mismatch" in err
    assert main(_base(data, four, "--limit", "2", "--allow-class-mismatch")) == 0
    assert "evaluated anyway" in capsys.readouterr().out


def test_class_names_reordered_or_refused(tiny_synthetic, tmp_path, capsys):
    import timm
    from rubiks_models.weights import save_weights

    data, _ = tiny_synthetic
    labels = json.loads((data / "labels.json").read_text())  # name -> index
    names = sorted(labels, key=labels.__getitem__)
    torch.manual_seed(3)
    model = timm.create_model("rubiksnet_tiny", num_classes=12, num_frames=4)
    named = tmp_path / "named.safetensors"
    save_weights(model, named, {"class_names": names})
    swapped = tmp_path / "swapped"
    shutil.copytree(data, swapped)
    a, b = names[0], names[1]
    (swapped / "labels.json").write_text(json.dumps({**labels, a: labels[b], b: labels[a]}))

    def predictions(root):
        out = tmp_path / f"{root.name}.json"
        argv = _base(root, named, "--per-video", "--output", str(out), "--overwrite")
        assert main(argv) == 0
        doc = json.loads(out.read_text())
        order = json.loads((root / "labels.json").read_text())
        by_index = sorted(order, key=order.__getitem__)
        return doc["metrics"]["top1"], {
            v["video_id"]: by_index[v["prediction"]] for v in doc["videos"]
        }

    top1, predicted = predictions(data)
    top1_swapped, predicted_swapped = predictions(swapped)
    assert "reordered to the dataset's order" in capsys.readouterr().out
    assert top1_swapped == top1 and predicted_swapped == predicted  # by class name
    renamed = tmp_path / "renamed.safetensors"
    save_weights(model, renamed, {"class_names": ["other", *names[1:]]})
    err = _refused(capsys, _base(data, renamed), "")
    assert "class names of" in err and "differ from the dataset's" in err
