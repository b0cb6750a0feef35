import json

import pytest
import torch

from rubiks_eval.checkpoint import load_weights
from rubiks_eval.testing import FakeVideoDataset, FakeVideoModel
from rubiks_eval.training import TrainConfig, config_from_args, lr_at, train

# a small, quiet run on the CPU
QUICK = dict(batch_size=4, lr=0.05, workers=0, device="cpu", progress=False)


def _cfg(tmp_path, name, **kw):
    base = dict(
        QUICK, output=str(tmp_path / name), epochs=3, log_every=1, schedule="cosine", seed=3
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg):
    train_set = FakeVideoDataset(n=18, num_classes=3, views=1, seed=1)
    val_set = FakeVideoDataset(n=9, num_classes=3, views=2, seed=2, broken=(5,))
    return train(
        cfg,
        model=FakeVideoModel(3, seed=0),
        train_set=train_set,
        val_set=val_set,
        metadata={"arch": "fake"},
    )


def test_lr_schedules():
    cfg = TrainConfig(epochs=50, batch_size=128)
    assert cfg.base_lr == pytest.approx(0.02)
    assert lr_at(cfg, 0, 10) == 1.0
    assert lr_at(cfg, 200, 10) == pytest.approx(0.1)  # epoch 20 (TSM: x0.1 at 20 and 40)
    assert lr_at(cfg, 400, 10) == pytest.approx(0.01)
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_at(cos, 0, 10) == pytest.approx(0.1)
    assert lr_at(cos, 55, 10) == pytest.approx(0.5)


def test_train_logs_validates_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path, "a")
    summary = _run(cfg)
    run = tmp_path / "a"
    assert len(summary["history"]) == 3
    assert all("val_top1" in h and h["val_failed"] == 1 for h in summary["history"])
    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events.count("epoch") == 3 and events[-1] == "end"
    last = json.loads((run / "last.json").read_text())
    assert last["epoch"] == 2 and (run / last["weights"]).exists()
    assert len(list((run / "checkpoints").glob("*.safetensors"))) == 2  # pruned to keep=2
    assert (run / "best.safetensors").exists()


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full = _run(_cfg(tmp_path, "full"))
    _run(_cfg(tmp_path, "cut", max_steps=6))  # stops mid-epoch 2 (4 steps per epoch)
    assert json.loads((tmp_path / "cut" / "last.json").read_text())["step"] == 6
    resumed = _run(_cfg(tmp_path, "cut"))
    a = load_weights(tmp_path / "full" / "final.safetensors")
    b = load_weights(tmp_path / "cut" / "final.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["history"][-1]["val_top1"] == full["history"][-1]["val_top1"]


def test_cli_config_parsing():
    cfg = config_from_args(
        [
            "synthetic",
            "--epochs",
            "2",
            "-b",
            "8",
            "--clip-grad",
            "0",
            "--schedule",
            "cosine",
            "--amp",
        ]
    )
    assert cfg.epochs == 2 and cfg.batch_size == 8 and cfg.clip_grad is None and cfg.amp
    assert cfg.base_lr == pytest.approx(0.01 * 8 / 64)


def test_build_model_fine_tunes_with_new_class_count(tmp_path):
    import timm
    from rubiks_models.weights import save_weights

    from rubiks_eval.builders import build_model

    src = timm.create_model("rubiksnet_tiny", num_classes=12)
    save_weights(src, tmp_path / "a.safetensors")
    cfg = TrainConfig(
        arch="rubiksnet_tiny", num_classes=5, pretrained=str(tmp_path / "a.safetensors")
    )
    model, meta = build_model(cfg)
    assert model.fc.out_features == 5 and meta["initialised_from"]
    torch.testing.assert_close(model.stem.weight, src.stem.weight)
    # any other mismatch is an error, not a silent partial load
    other = timm.create_model("rubiksnet_small", num_classes=12)
    save_weights(other, tmp_path / "b.safetensors")
    cfg_bad = TrainConfig(
        arch="rubiksnet_tiny", num_classes=5, pretrained=str(tmp_path / "b.safetensors")
    )
    with pytest.raises(ValueError, match=r"b\.safetensors.*does not fit"):
        build_model(cfg_bad)
    # a non-finite shift is refused at load, naming the file and the key
    with torch.no_grad():
        src.stages[1].blocks[0].rubiks.shift[0, 0] = float("nan")
    save_weights(src, tmp_path / "nan.safetensors")
    cfg_nan = TrainConfig(
        arch="rubiksnet_tiny", num_classes=5, pretrained=str(tmp_path / "nan.safetensors")
    )
    with pytest.raises(ValueError, match=r"nan\.safetensors.*stages\.1\.blocks\.0\.rubiks\.shift"):
        build_model(cfg_nan)


def test_freeze_temporal_shift_keeps_the_temporal_row_at_zero():
    from rubiks_eval.builders import build_model

    cfg = TrainConfig(
        arch="rubiksnet_tiny", num_classes=4, num_frames=4, freeze_temporal_shift=True
    )
    model, meta = build_model(cfg)
    assert meta["frozen_temporal_shifts"] > 0
    shifts = [p for n, p in model.named_parameters() if n.endswith("rubiks.shift")]
    before = [p.detach().clone() for p in shifts]
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 4, 3, 32, 32)).logsumexp(1).sum().backward()
        opt.step()
    for p in shifts:
        assert torch.count_nonzero(p[0]) == 0
    assert any(not torch.equal(p[1:], b[1:]) for p, b in zip(shifts, before, strict=True))


# RubiksNet-Tiny on small random clips
TINY_DUMMY = dict(
    QUICK, dataset="dummy", num_classes=4, arch="rubiksnet_tiny", num_frames=4, input_size=32
)


def _tiny_cfg(tmp_path, name, **kw):
    base = dict(
        TINY_DUMMY,
        output=str(tmp_path / name),
        dummy_videos=8,
        dropout=0.0,
        schedule="constant",
        log_every=0,
        seed=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_finetune_from_another_class_count_overfits_dummy_data(tmp_path):
    """The fine-tuning path (pretrained file with another head, new class count, shift lr
    multiplier) on random clips: the model memorises them, so the loss falls."""
    import timm
    from rubiks_models.weights import save_weights

    torch.manual_seed(0)
    save_weights(timm.create_model("rubiksnet_tiny", num_classes=9), tmp_path / "k.safetensors")
    cfg = _tiny_cfg(tmp_path, "ft", pretrained=str(tmp_path / "k.safetensors"), epochs=6)
    summary = train(cfg)
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    final = load_weights(tmp_path / "ft" / "final.safetensors")
    assert final["fc.weight"].shape[0] == 4


def test_finetune_refuses_missing_released_weights(tmp_path, monkeypatch):
    from rubiks_eval.builders import resolve_pretrained

    monkeypatch.setenv("RUBIKSNET_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"kinetics_tiny\.pth\.tar"):
        resolve_pretrained("rubiksnet_tiny.kinetics")
    with pytest.raises(FileNotFoundError, match="not a released tag"):
        resolve_pretrained("kinetics_tiny")
    (tmp_path / "kinetics_tiny.safetensors").write_bytes(b"")
    assert resolve_pretrained("rubiksnet_tiny.kinetics") == tmp_path / "kinetics_tiny.safetensors"


def test_aq_training_pulls_towards_the_budget_and_hardens_within_it(tmp_path):
    """AQ on tiny data: the penalty lowers the expected shifted fraction (compared with the
    same run without it); hardening respects the budget and is evaluated."""
    from rubiks_models.weights import load_model

    kw = dict(arch="rubiksnet_tiny_aq", epochs=3, lr=0.1, aq_budget=0.125)
    free = train(_tiny_cfg(tmp_path, "free", aq_penalty=0.0, **kw))
    pulled = train(_tiny_cfg(tmp_path, "pulled", aq_penalty=1.0, **kw))
    assert pulled["aq_expected_shifted_fraction"] < free["aq_expected_shifted_fraction"] - 0.1
    for s in (free, pulled):
        assert s["aq_hard_shifted_fraction"] <= 0.125
        assert s["aq_trained_hard_shifted_fraction"] > 0.125  # so the export had work to do
        assert 0 <= s["val_top1_hard"] <= 100 and 0 <= s["val_top1_soft"] <= 100
        assert "aq_tau" in s["history"][-1]
    assert free["aq_channels_recentred"] > pulled["aq_channels_recentred"]
    hard = load_model(tmp_path / "pulled" / "final_hard.safetensors")
    assert hard.deploy and hard.num_classes == 4


def test_ddp_two_processes_keep_ranks_identical_and_resume_exactly(tmp_path):
    """2 CPU processes (gloo): parameters identical on both ranks after training; rank 0
    alone writes logs/checkpoints; an interrupted + resumed run ends where the
    uninterrupted one does."""
    from rubiks_eval.testing import ddp_train_worker, run_local_group

    cfg = dict(TINY_DUMMY, dummy_videos=16, dropout=0.5, epochs=2, log_every=1, seed=2, cut_steps=3)
    run_local_group(ddp_train_worker, 2, str(tmp_path), cfg)
    runs = {
        (name, r): torch.load(tmp_path / f"{name}.rank{r}.pt", weights_only=False)
        for name in ("full", "cut", "resumed")
        for r in (0, 1)
    }
    for name in ("full", "resumed"):
        a, b = runs[name, 0]["state"], runs[name, 1]["state"]
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
        assert runs[name, 0]["summary"]["world_size"] == 2
        assert runs[name, 0]["summary"]["steps"] == 8  # 16 videos / global batch 4 x 2
    full, resumed = runs["full", 0]["state"], runs["resumed", 0]["state"]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    saved = load_weights(tmp_path / "full" / "final.safetensors")
    for k in saved:
        assert torch.equal(saved[k], full[k]), k
    log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1  # one writer
    assert [r["event"] for r in log].count("train") == 8
    assert all(r["clips_per_s"] > 0 for r in log if r["event"] == "train")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["-b", "0"], "--batch-size must be >= 1"),
        (["--lr", "-0.1"], "--lr must be a positive number"),
        (["--aq-budget", "1.5"], "--aq-budget must be a fraction"),
        (["--input-size", "100", "--scale-size", "64"], "--input-size 100 is larger"),
        (["--device", "gpu9"], "--device 'gpu9' is not a device"),
        (["--val-list", "no/such/list.txt"], "--val-list no/such/list.txt: no such file"),
    ],
)
def test_cli_refuses_impossible_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        config_from_args(["dummy", *argv])
    assert exc.value.code == 2
    assert f"train.py: error: {message}" in capsys.readouterr().err


def test_cli_refuses_a_file_as_run_folder(tmp_path, capsys):
    run_file = tmp_path / "run"
    run_file.write_text("not a folder")
    with pytest.raises(SystemExit):
        config_from_args(["dummy", "--output", str(run_file)])
    assert "is a file; it must be a run folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("dummy", "--train-list: dataset 'dummy' draws random clips, it reads no list"),
        ("synthetic", "dataset 'synthetic' reads its folder's JSON annotations"),
    ],
)
def test_cli_refuses_a_list_the_dataset_would_not_read(tmp_path, capsys, dataset, message):
    listed = tmp_path / "train.txt"
    listed.write_text("clip0 8 0\n")
    with pytest.raises(SystemExit) as exc:
        config_from_args([dataset, "--train-list", str(listed)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    # a list of frame folders is read where the dataset is named
    assert config_from_args(["hmdb51", "--train-list", str(listed)]).train_list == str(listed)
