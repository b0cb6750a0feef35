import json

import pytest

from rubiks_eval.cli import main

ARGS = ["--num-frames", "4", "--crop-size", "24", "-j", "0", "-b", "4", "--no-progress"]


def _synthetic(data, ckpt, *extra: str) -> list[str]:
    """The command line for the synthetic set at ``data`` and checkpoint ``ckpt``."""
    return ["synthetic", "--root-path", str(data), "--pretrained", str(ckpt), *extra]


@pytest.mark.parametrize("protocol,views", [("1clip", 1), ("2clip", 6)])
def test_cli_end_to_end(tiny_synthetic, tmp_path, protocol, views, capsys):
    data, ckpt = tiny_synthetic
    out = tmp_path / "r.json"
    scores = tmp_path / "s.npz"
    rc = main(
        _synthetic(
            data,
            ckpt,
            "--protocol",
            protocol,
            "--output",
            str(out),
            "--per-video",
            "--save-scores",
            str(scores),
            *ARGS,
        )
    )
    assert rc == 0
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    assert m["num_videos"] == 14 and m["num_evaluated"] == 14 and m["num_failed"] == 0
    assert doc["num_views"] == views and len(doc["videos"]) == 14
    assert 0.0 <= m["top1"] <= m["top5"] <= 100.0
    text = capsys.readouterr().out
    assert "top-1:" in text and "mean class accuracy" in text
    import numpy as np

    assert np.load(scores)["scores"].shape == (14, 12)


def test_cli_names_unreadable_videos(tiny_synthetic, tmp_path, capsys):
    import shutil

    data, ckpt = tiny_synthetic
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    first = json.loads((copy / "validation.json").read_text())[0]["id"]
    victim = next((copy / "videos").glob(f"{first}.*"))
    victim.write_bytes(b"not a video")
    out = tmp_path / "r.json"
    rc = main(_synthetic(copy, ckpt, "--output", str(out), *ARGS))
    assert rc == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["num_videos"] == 14 and m["num_failed"] == 1
    assert m["failures"][0]["video_id"] == victim.stem
    assert victim.stem in capsys.readouterr().out


def test_cli_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # parser.error: exit status 2
        main(_synthetic(tmp_path / "none", tmp_path / "missing.safetensors"))
    assert exc.value.code == 2
    assert "rubiks-eval: error: --root-path" in capsys.readouterr().err
    rc = main(["dummy", "--pretrained", str(tmp_path / "missing.safetensors")])
    assert rc == 2 and "missing.safetensors" in capsys.readouterr().err


def test_cli_missing_tag_weights_say_which_file_and_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RUBIKSNET_WEIGHTS", str(tmp_path))
    rc = main(["dummy", "--pretrained", "rubiksnet_tiny.ssv2", *ARGS])
    err = capsys.readouterr().err
    assert rc == 2
    assert "ssv2_tiny.pth.tar" in err and str(tmp_path) in err and "--pretrained PATH" in err


def test_cli_two_processes_equal_one(tiny_synthetic, tmp_path):
    """torchrun-style 2-process CPU run (gloo, 127.0.0.1) reports exactly the 1-process result."""
    from rubiks_eval.testing import cli_worker, run_local_group

    data, ckpt = tiny_synthetic
    base = _synthetic(
        data, ckpt, "--protocol", "1clip", "--per-video", *ARGS[:-3], "-b", "1", "--no-progress"
    )
    assert main([*base, "--output", str(tmp_path / "one.json")]) == 0
    run_local_group(cli_worker, 2, [*base, "--output", str(tmp_path / "two.json")])
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["metrics"] == one["metrics"]
    assert two["videos"] == one["videos"]


def test_installation_check(capsys):
    from rubiks_eval.check import main as check

    assert check(["--size", "32", "--num-frames", "2", "--device", "cpu"]) == 0
    assert "Installation successful" in capsys.readouterr().out


def test_installation_check_refuses_bad_options(capsys):
    from rubiks_eval.check import main as check

    for argv, message in (
        (["--device", "gpu9"], "is not a device"),
        (["--arch", "resnet50"], "is not a RubiksNet"),
        (["--size", "8"], "--size >= 32"),
    ):
        with pytest.raises(SystemExit) as exc:
            check(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_fused_form_scores_like_the_eager_model(tiny_synthetic, tmp_path):
    data, ckpt = tiny_synthetic
    base = _synthetic(data, ckpt, *ARGS)
    docs = {}
    for form in ("eager", "fused", "auto"):
        out = tmp_path / f"{form}.json"
        assert main([*base, "--form", form, "--save-scores", str(tmp_path / f"{form}.npz"),
                     "--output", str(out)]) == 0  # fmt: skip
        docs[form] = json.loads(out.read_text())
    import numpy as np

    assert docs["auto"]["config"]["form"] == "eager"  # the CPU default
    assert docs["fused"]["config"]["form"] == "fused"
    eager, fused = (np.load(tmp_path / f"{f}.npz")["scores"] for f in ("eager", "fused"))
    np.testing.assert_allclose(fused, eager, rtol=1e-4, atol=1e-5)


def test_model_form_resolution():
    import timm
    import torch

    from rubiks_eval.cli import model_form

    rubiks = timm.create_model("rubiksnet_tiny", num_classes=3)
    other = torch.nn.Linear(2, 2)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert model_form("auto", rubiks, cuda) == "fused"
    assert model_form("auto", rubiks, cpu) == "eager"
    assert model_form("auto", other, cuda) == "eager"
    assert model_form("eager", rubiks, cuda) == "eager"
    assert model_form("fused", rubiks, cpu) == "fused"
    with pytest.raises(ValueError, match="needs a RubiksNet"):
        model_form("fused", other, cpu)
