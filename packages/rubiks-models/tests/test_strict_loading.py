"""Loading is strict and names the file on every path; conversion writes one atomic unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import rubiks_models.convert as convert_module
from rubiks_models import RubiksNet
from rubiks_models.convert import main as convert_main
from rubiks_models.weights import CheckpointError, load_model, save_weights

CKPT = "orig_tiny_rubiks3d.pth.tar"


@pytest.fixture(scope="module")
def four_class(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("four") / "four.safetensors"
    save_weights(RubiksNet("tiny", 4).eval(), path)
    return path


def _timm(file: Path, **kwargs):
    return timm.create_model(
        "rubiksnet_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **kwargs
    )


def _edited(src: Path, dst: Path, edit) -> Path:
    obj = torch.load(src, weights_only=True)
    edit(obj)
    torch.save(obj, dst)
    return dst


# ------------------------------------------------------------------ converter


def test_convert_refuses_an_existing_folder_unless_overwrite(fixtures, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _exit_code(convert_main, [str(fixtures / CKPT), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert convert_main([str(fixtures / CKPT), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_convert_never_replaces_its_input(tmp_path, four_class, capsys):
    folder = four_class.parent
    for target in (folder, folder / "four.safetensors"):
        code = _exit_code(convert_main, [str(four_class), str(target), "--overwrite"])
        assert code == 2 and "would replace the input" in capsys.readouterr().err
    assert four_class.is_file()


def test_convert_interrupted_between_files_leaves_the_old_pair(fixtures, tmp_path, four_class):
    out = tmp_path / "out"
    assert convert_main([str(four_class), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = convert_module.atomic_write

    def killed(path, write):
        if Path(path).name == "config.json":
            raise KeyboardInterrupt  # as if killed after model.safetensors was written
        return real(path, write)

    convert_module.atomic_write = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            convert_module.convert(fixtures / CKPT, out, overwrite=True)
    finally:
        convert_module.atomic_write = real
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_model(out).num_classes == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("value", ["4.5", "four", -3, True])
def test_non_integer_num_classes_metadata_is_a_clear_error(fixtures, tmp_path, capsys, value):
    bad = _edited(fixtures / CKPT, tmp_path / "meta.pth.tar", lambda o: o.update(num_classes=value))
    with pytest.raises(CheckpointError, match=r"meta\.pth\.tar.*'num_classes'.*not a non-negative"):
        load_model(bad)
    assert convert_main([str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rubiks-convert: error:") and "meta.pth.tar" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_zero_frames_metadata_is_a_clear_error(fixtures, tmp_path):
    bad = _edited(fixtures / CKPT, tmp_path / "meta.pth.tar", lambda o: o.update(num_frames=0))
    with pytest.raises(CheckpointError, match=r"meta\.pth\.tar: metadata 'num_frames' is 0"):
        load_model(bad)


def _exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


# ------------------------------------------------------------------ timm


def test_timm_missing_and_corrupt_files_are_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        _timm(missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors"):
        _timm(corrupt)


def test_timm_refuses_a_non_finite_shift(fixtures, tmp_path):
    def nan_shift(o):
        o["model"]["backbone.layer1.0.as3.rubiks3d.shift"][1, 2] = float("nan")

    bad = _edited(fixtures / CKPT, tmp_path / "nan.pth.tar", nan_shift)
    with pytest.raises(
        CheckpointError, match=r"nan\.pth\.tar.*stages\.1\.blocks\.0\.rubiks\.shift"
    ):
        _timm(bad)


def test_timm_takes_the_file_class_count_unless_asked(four_class):
    model = _timm(four_class).eval()
    reference = load_model(four_class).eval()
    assert model.num_classes == 4 and model.pretrained_cfg["state_dict"] is None
    clip = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), reference(clip))
    asked = _timm(four_class, num_classes=7)  # an explicit other count: a new head
    assert asked.num_classes == 7 and asked.fc.out_features == 7
    want = reference.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in asked.state_dict().items() if "fc." not in k)


def test_timm_new_head_still_loads_every_other_key_strictly(fixtures, tmp_path):
    def drop(o):
        o["model"].pop("backbone.layer2.1.conv3.weight")

    bad = _edited(fixtures / CKPT, tmp_path / "short.pth.tar", drop)
    with pytest.raises(CheckpointError, match=r"short\.pth\.tar.*stages\.2\.blocks\.1\.conv2"):
        _timm(bad, num_classes=10)
    # timm's own non-strict load stays reachable when asked for by name
    model = _timm(bad, num_classes=10, pretrained_strict=False)
    assert model.num_classes == 10


def test_timm_refuses_another_tier(four_class):
    with pytest.raises(CheckpointError, match=r"four\.safetensors.*rubiksnet_small"):
        timm.create_model(
            "rubiksnet_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(four_class))
        )


def test_converted_config_is_valid_json(four_class, tmp_path):
    out = tmp_path / "conv"
    assert convert_main([str(four_class), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["num_classes"] == 4
    (out / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_model(out)


def test_timm_adaptations_still_apply(four_class):
    gray = _timm(four_class, in_chans=1)  # timm sums the stem's input channels
    ref = load_model(four_class).stem.weight.sum(1, keepdim=True)
    torch.testing.assert_close(gray.stem.weight, ref)
    features = _timm(four_class, features_only=True)
    inner = [m for m in features.modules() if isinstance(m, RubiksNet)]
    assert inner and all(m.pretrained_cfg["state_dict"] is None for m in inner)
    assert len(features(torch.randn(1, 2, 3, 32, 32))) == 5


@pytest.mark.parametrize(
    "build",
    [
        dict(in_chans=1),
        dict(num_classes=0, global_pool=""),
        dict(normalize_grad=False, normalize_t_factor=0.5, drop_rate=0.25),
        dict(width=16, repeats=(1, 1, 1, 1), se_reduction=4),
    ],
    ids=["in_chans", "unpooled", "gradient_rule", "custom_width"],
)
def test_save_weights_then_load_model_rebuilds_the_same_model(tmp_path, build):
    torch.manual_seed(0)
    build = dict(build)
    model = RubiksNet("tiny", build.pop("num_classes", 5), **build).eval()
    save_weights(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors").eval()
    assert loaded.build_args() == model.build_args()
    x = torch.randn(1, 2, model.in_chans, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # an explicit keyword still wins over the file's
    assert load_model(tmp_path / "m.safetensors", drop_rate=0.5).drop_rate == 0.5


def test_model_args_the_model_does_not_take_are_named(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = save_weights(RubiksNet("tiny", 3), tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    meta["model_args"] = json.dumps({"in_chans": 3, "depth": 50})
    save_file(load_file(path), tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=r"bad.safetensors: model_args .* \['depth'\]"):
        load_model(tmp_path / "bad.safetensors")


def test_convert_keeps_a_saved_models_own_architecture_and_deploy_form(tmp_path):
    from rubiks_models.deploy import quantize_model

    torch.manual_seed(0)
    models = {
        "one_channel": RubiksNet("tiny", 5, in_chans=1),
        "deployed_aq": quantize_model(RubiksNet("tiny", 5, variant="rubiks3d-aq")),
    }
    for name, model in models.items():
        model.eval()
        save_weights(model, tmp_path / f"{name}.safetensors")
        assert convert_main([str(tmp_path / f"{name}.safetensors"), str(tmp_path / name)]) == 0
        x = torch.randn(1, 2, model.in_chans, 32, 32)
        for loaded in (
            load_model(tmp_path / name),
            timm.create_model(f"local-dir:{tmp_path / name}", pretrained=True),
        ):
            assert loaded.deploy == model.deploy and loaded.in_chans == model.in_chans, name
            with torch.no_grad():
                assert torch.equal(loaded.eval()(x), model(x)), name
        # a converted folder converts again (into another folder)
        assert convert_main([str(tmp_path / name), str(tmp_path / f"{name}_again")]) == 0
        again = load_model(tmp_path / f"{name}_again").eval()
        with torch.no_grad():
            assert torch.equal(again(x), model(x)), name
