"""FLOP counter and deployment export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rubiks_models import RubiksNet
from rubiks_models.deploy import export_deploy, quantize_model
from rubiks_models.flops import README_GMACS, count_macs, main
from rubiks_models.weights import load_model, save_weights


@pytest.mark.parametrize("name", list(README_GMACS))
def test_readme_macs_within_1pct(name: str) -> None:
    tier = name.split("_")[1]
    variant = "rubiks3d-aq" if name.endswith("_aq") else "rubiks3d"
    with torch.device("meta"):
        model = RubiksNet(tier, 174, variant=variant)
    report = count_macs(model, (1, 8, 3, 224, 224))
    assert abs(report.total / 1e9 - README_GMACS[name]) / README_GMACS[name] < 0.01
    conv = {"tiny": 3.695, "small": 6.506, "medium": 10.926, "large": 15.347}[tier]
    assert abs(report.conv_linear / 1e9 - conv) < 0.002


def test_flops_cli(capsys: pytest.CaptureFixture) -> None:
    assert main(["rubiksnet_tiny", "--frames", "2", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "rubiksnet_tiny" in out and "1,898,760" in out


def test_flops_help_states_the_convention(capsys: pytest.CaptureFixture) -> None:
    """The table's header sends readers to ``--help`` for the counting convention."""
    assert _code(main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "Convention" in out and "8 for the interpolated 3-D shift" in out
    assert "not counted: residual additions" in out


def test_quantized_shift_counts_zero() -> None:
    with torch.device("meta"):
        model = RubiksNet("tiny", 174, deploy=True)
    assert count_macs(model, (1, 2, 3, 64, 64)).shift == 0


def test_count_macs_refuses_a_fused_model() -> None:
    from rubiks_models.fused import fuse_model

    with pytest.raises(TypeError, match="count the RubiksNet it was made from"):
        count_macs(fuse_model(RubiksNet("tiny", 5).eval()), (1, 2, 3, 64, 64))


def test_deploy_integer_shifts_are_exact(tmp_path) -> None:
    model = RubiksNet("tiny", 5).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("rubiks.shift"):
                p.copy_(torch.randint(-2, 3, p.shape))
    clip = torch.randn(2, 3, 3, 32, 32)
    deployed, report = export_deploy(model, clip)
    assert report["max_abs_logit_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    assert all(m.quantize for n, m in deployed.named_modules() if n.endswith("rubiks"))
    save_weights(deployed, tmp_path / "d.safetensors", {"deploy": "true"})
    again = load_model(tmp_path / "d.safetensors").eval()
    assert again.deploy
    with torch.no_grad():
        torch.testing.assert_close(again(clip), deployed(clip))


def test_deploy_hardens_aq() -> None:
    model = RubiksNet("tiny", 5, variant="rubiks3d-aq").eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("rubiks.shift"):
                p.copy_(torch.randint(-2, 3, p.shape))
        for m in model.modules():
            if hasattr(m, "tau"):
                m.weight.copy_(F.one_hot(torch.randint(0, 3, (m.channels,)), 3) * 5.0)
                m.tau.fill_(1e-3)  # effectively one-hot: the hard shift must agree
    clip = torch.randn(2, 4, 3, 32, 32)
    deployed, report = export_deploy(model, clip)
    assert 0 < report["aq_shifted_fraction"] < 1
    layer = deployed.stages[1].blocks[0].tshift
    assert layer.quantize and set(layer.shift[0].tolist()) <= {-1.0, 0.0, 1.0}
    # the released convention: tap 0 reads x[t-1], i.e. a shift of -1
    assert report["max_rel_logit_diff"] < 1e-3
    assert isinstance(quantize_model(model), RubiksNet)


def test_deployed_aq_model_round_trips_through_save_weights(tmp_path) -> None:
    torch.manual_seed(0)
    hard = quantize_model(RubiksNet("tiny", 5, num_frames=4, variant="rubiks3d-aq")).eval()
    save_weights(hard, tmp_path / "hard.safetensors")  # records deploy=true by itself
    back = load_model(tmp_path / "hard.safetensors").eval()
    assert back.deploy
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), hard(x), rtol=0, atol=0)


def _code(fn, argv) -> int:
    try:
        return fn(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rubiksnet_huge"], "unknown model 'rubiksnet_huge'"),
        (["rubiksnet_tiny", "--frames", "0"], "--frames and --num-classes must be >= 1"),
        (
            ["rubiksnet_tiny", "--size", "8"],
            "--frames and --num-classes must be >= 1 and --size >= 32",
        ),
    ],
)
def test_flops_cli_refuses_bad_arguments(argv, message, capsys) -> None:
    assert _code(main, argv) == 2
    err = capsys.readouterr().err
    assert f"rubiks-flops: error: {message}" in err and "Traceback" not in err


def test_export_cli_checks_paths_before_work(tiny_checkpoint, tmp_path, capsys) -> None:
    from rubiks_models.deploy import main as export_main

    ckpt = tiny_checkpoint  # in tmp_path
    before = ckpt.read_bytes()
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep")
    cases = [
        ([str(tmp_path / "none.safetensors")], "no such checkpoint"),
        ([str(ckpt), "--output", str(ckpt), "--overwrite"], "would replace an input"),
        ([str(ckpt), "--output", str(taken)], "exists; pass --overwrite"),
        ([str(ckpt), "--output", str(tmp_path)], "would replace an input"),
        ([str(ckpt), "--output", str(tmp_path / "deployed.pth.tar")], "name a .safetensors"),
        ([str(ckpt), "--input", str(tmp_path / "clip.safetensors")], "no such file"),
        ([str(ckpt), "--frames", "0"], "--frames must be >= 1"),
    ]
    for argv, message in cases:
        assert _code(export_main, argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert ckpt.read_bytes() == before and taken.read_bytes() == b"keep"
    # a converted folder as the input: nothing inside it may be the output
    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for inside in ("config.json", "model.safetensors", "new.safetensors"):
        argv = [str(folder), "--output", str(folder / inside), "--overwrite"]
        assert _code(export_main, argv) == 2, argv
        assert "would replace an input of this run" in capsys.readouterr().err
    assert (folder / "config.json").read_text() == "{}"
    out = tmp_path / "deployed.safetensors"
    argv = [str(ckpt), "--frames", "2", "--size", "32", "--output", str(out)]
    assert export_main(argv) == 0 and out.is_file()
