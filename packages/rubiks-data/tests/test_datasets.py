"""Datasets over generated videos (webm, mp4) and frame folders; the sample contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rubiks_data import (
    Batch,
    FrameFolderDataset,
    VideoReadError,
    VideoSample,
    build_dataset,
    collate_samples,
    get_protocol,
    video_list_dataset,
)
from rubiks_data.transforms import normalize, resize_frame
from rubiks_data.video import read_frames


def test_synthetic_webm_val_1clip(synth_webm):
    ds = build_dataset("synthetic", synth_webm, "val")
    ann = json.loads((synth_webm / "validation.json").read_text())
    labels = json.loads((synth_webm / "labels.json").read_text())
    assert len(ds) == 12 and ds.num_classes == 12 and ds.mode == "test"
    assert ds.video_ids == [e["id"] for e in ann]
    assert ds.class_names[3] == "Moving something up"
    s = ds[0]
    assert isinstance(s, VideoSample) and s.error is None
    assert s.clip.shape == (1, 8, 3, 224, 224) and s.clip.dtype == torch.float32
    assert s.label == int(labels[ann[0]["template"].replace("[", "").replace("]", "")])
    assert s.video_id == ann[0]["id"]
    assert torch.equal(ds[0].clip, s.clip)  # deterministic


def test_video_pixels_follow_the_protocol(synth_webm):
    ds = build_dataset("synthetic", synth_webm, "val", protocol="2clip", num_segments=4)
    s = ds[2]
    assert s.clip.shape == (6, 4, 3, 224, 224)
    path = synth_webm / "videos" / f"{s.video_id}.webm"
    idx = get_protocol("2clip").indices(16, 4)
    frames = read_frames(path, idx)
    ref = resize_frame(frames[4 + 1], 256)  # clip 1, frame 1
    w_step = (ref.width - 224) // 4
    x, y = 4 * w_step, 2 * ((256 - 224) // 4)  # right crop
    want = normalize(np.asarray(ref.crop((x, y, x + 224, y + 224))))
    assert torch.equal(s.clip[3 + 1, 1], want)


def test_mp4_and_short_videos(synth_mp4):
    ds = build_dataset("synthetic", synth_mp4, "val", crop_size=112, scale_size=128)
    lengths = [json.loads((synth_mp4 / "config.json").read_text())["num_frames"]]
    assert lengths == [[6, 20]]
    for i in range(len(ds)):
        s = ds[i]
        assert s.error is None, s.error
        assert s.clip.shape == (1, 8, 3, 112, 112)


def test_frame_folders_match_manual_loading(synth_webm):
    ds = build_dataset("synthetic", synth_webm, "val", video=False, num_segments=4)
    assert isinstance(ds, FrameFolderDataset) and ds.num_classes == 12
    s = ds[1]
    vid = s.video_id
    ref = Image.open(synth_webm / "frames" / vid / "000015.jpg").convert("RGB")  # 0-based 14
    assert get_protocol("1clip").indices(16, 4) == [2, 6, 10, 14]
    r = resize_frame(ref, 256)
    x, y = round((r.width - 224) / 2), round((r.height - 224) / 2)
    assert torch.equal(s.clip[0, 3], normalize(np.asarray(r.crop((x, y, x + 224, y + 224)))))
    # the same frames through the named somethingv2 frame-folder dataset
    ds2 = build_dataset(
        "somethingv2",
        synth_webm / "frames",
        list_file=synth_webm / "val_videofolder.txt",
        num_segments=4,
        num_classes=12,
    )
    assert ds2.template == "{:06d}.jpg" and torch.equal(ds2[1].clip, s.clip)


def test_ssv2_name_reads_videos_with_json(synth_webm):
    ds = build_dataset("ssv2", synth_webm / "videos", "val", annotations=synth_webm)
    assert len(ds) == 12 and ds.num_classes == 12
    ref = build_dataset("synthetic", synth_webm, "val")
    assert torch.equal(ds[4].clip, ref[4].clip)
    ds_file = build_dataset(
        "somethingv2-video" if False else "ssv2",
        synth_webm / "videos",
        "train",
        annotations=synth_webm / "train.json",
    )
    assert len(ds_file) == 24 and ds_file.mode == "train"


def test_video_list_csv(synth_webm, tmp_path):
    ann = json.loads((synth_webm / "validation.json").read_text())[:3]
    vids = synth_webm / "videos"
    lines = "path,label\n" + "".join(f"{e['id']}.webm,{i}\n" for i, e in enumerate(ann))
    (tmp_path / "list.csv").write_text(lines)
    ds = video_list_dataset(tmp_path / "list.csv", vids)
    assert ds.video_ids == [f"{e['id']}.webm" for e in ann] and ds.num_classes == 3
    assert ds[2].label == 2 and ds[2].clip.shape == (1, 8, 3, 224, 224)
    ds2 = build_dataset("video-list", vids, list_file=tmp_path / "list.csv", protocol="2clip")
    assert ds2[0].clip.shape[0] == 6
    named = video_list_dataset(tmp_path / "list.csv", vids, class_names=["a", "b", "c"])
    assert named.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"class names given more than once: \['b'\]"):
        video_list_dataset(tmp_path / "list.csv", vids, class_names=["b", "a", "b"])


@pytest.fixture
def broken(synth_webm, tmp_path):
    """A copy of the val videos with a missing, an empty and a truncated file, and frame
    folders with a missing frame, a corrupt frame and a zero-frame entry."""
    root = tmp_path / "broken"
    shutil.copytree(synth_webm / "videos", root / "videos")
    shutil.copytree(synth_webm / "frames", root / "frames")
    for name in ("labels.json", "validation.json", "val_videofolder.txt"):
        shutil.copy(synth_webm / name, root / name)
    ids = [e["id"] for e in json.loads((root / "validation.json").read_text())]
    (root / "videos" / f"{ids[0]}.webm").unlink()
    (root / "videos" / f"{ids[1]}.webm").write_bytes(b"")
    data = (root / "videos" / f"{ids[2]}.webm").read_bytes()
    (root / "videos" / f"{ids[2]}.webm").write_bytes(data[: 2 * len(data) // 3])
    (root / "frames" / ids[0] / "000010.jpg").unlink()  # 1clip of 8 from 16 reads 2, 4, .., 16
    (root / "frames" / ids[1] / "000004.jpg").write_bytes(b"not a jpeg")
    lines = (root / "val_videofolder.txt").read_text().splitlines()
    lines[2] = f"{ids[2]} 0 {lines[2].split()[2]}"
    (root / "val_videofolder.txt").write_text("\n".join(lines) + "\n")
    return root, ids


def test_broken_videos_reported_not_substituted(broken):
    root, ids = broken
    ds = build_dataset("synthetic", root, "val")
    samples = [ds[i] for i in range(4)]
    assert [s.video_id for s in samples] == ids[:4]
    assert samples[0].clip is None and samples[0].error.startswith("missing file")
    assert samples[1].clip is None and samples[1].error == "empty file (0 bytes)"
    assert samples[2].clip is None and "truncated" in samples[2].error
    assert samples[3].clip is not None and samples[3].error is None
    batch = collate_samples(samples)
    assert isinstance(batch, Batch) and batch.clips.shape == (1, 1, 8, 3, 224, 224)
    assert batch.video_ids == [ids[3]] and batch.labels.tolist() == [samples[3].label]
    assert [f[0] for f in batch.failures] == ids[:3]
    strict = build_dataset("synthetic", root, "val", strict=True)
    with pytest.raises(VideoReadError) as info:
        strict[1]
    assert info.value.video_id == ids[1] and info.value.reason == "empty file (0 bytes)"


def test_broken_frames_reported(broken):
    root, _ = broken
    ds = build_dataset("synthetic", root, "val", video=False)
    s0, s1, s2, s3 = (ds[i] for i in range(4))
    assert (
        s0.clip is None and s0.error.startswith("missing frame file") and "000010.jpg" in s0.error
    )
    assert s1.clip is None and s1.error.startswith("unreadable frame file")
    assert s2.clip is None and s2.error == "zero frames"
    assert s3.error is None


def test_dataloader_workers_and_collate(broken):
    root, ids = broken
    ds = build_dataset("synthetic", root, "val", num_segments=4, crop_size=112, scale_size=128)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert sum(len(b.video_ids) for b in batches) == 9
    assert sorted(f[0] for b in batches for f in b.failures) == sorted(ids[:3])
    assert batches[0].clips.shape == (1, 1, 4, 3, 112, 112)
    strict = build_dataset("synthetic", root, "val", strict=True, num_segments=2)
    it = iter(DataLoader(strict, batch_size=2, num_workers=2, collate_fn=collate_samples))
    with pytest.raises(VideoReadError):
        next(it)
    it._shutdown_workers()  # do not leave the workers to the garbage collector


def test_all_failed_batch():
    mixed = [VideoSample(torch.zeros(v, 2, 3, 4, 4), 0, f"v{v}") for v in (1, 3, 1)]
    with pytest.raises(ValueError, match=r"v1: \(1, 2, 3, 4, 4\), v3: \(3, 2, 3, 4, 4\)"):
        collate_samples(mixed)
    batch = collate_samples([VideoSample(None, 1, "a", "zero frames")])
    assert (
        batch.clips is None
        and batch.labels.shape == (0,)
        and batch.failures == [("a", "zero frames")]
    )


def test_training_mode_seeded(synth_webm):
    ds = build_dataset("synthetic", synth_webm, "train", seed=11, num_segments=4)
    assert ds.mode == "train" and len(ds) == 24
    a = ds[0].clip
    assert a.shape == (1, 4, 3, 224, 224)
    assert torch.equal(ds[0].clip, a)
    ds.set_epoch(1)
    assert not torch.equal(ds[0].clip, a)
    ds.set_epoch(0)
    assert torch.equal(ds[0].clip, a)
    assert torch.equal(ds[-24].clip, a) and ds[np.int64(0)].video_id == ds[0].video_id
    for bad, error in ((24, IndexError), (-25, IndexError), (slice(0, 2), TypeError)):
        with pytest.raises(error, match=r"out of range|must be an integer"):
            ds[bad]
    unseeded = build_dataset("synthetic", synth_webm, "train", num_segments=4)
    torch.manual_seed(5)
    b = unseeded[3].clip
    torch.manual_seed(5)
    assert torch.equal(unseeded[3].clip, b)  # follows torch's global RNG


def test_build_dataset_errors(synth_webm, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", synth_webm)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("synthetic", synth_webm, "dev")
    with pytest.raises(FileNotFoundError, match="no list file"):
        build_dataset("kinetics", tmp_path)
    with pytest.raises(ValueError, match="bad frame template"):
        build_dataset("synthetic", synth_webm, video=False, template="frame.jpg")
    with pytest.raises(FileNotFoundError, match="annotations"):
        build_dataset("ssv2", tmp_path, video=True)
    for bad in (0, -3, 2.0, True, "10"):
        with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1"):
            build_dataset("dummy", ".", num_classes=bad)
        with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1"):
            build_dataset("somethingv2", synth_webm, num_classes=bad)
    assert build_dataset("dummy", ".", num_classes=np.int64(3)).num_classes == 3
    (tmp_path / "val_videofolder.txt").write_text("1 16 0\n2 16 400\n")
    with pytest.raises(
        ValueError, match=r"val_videofolder.txt:2: label 400 out of range \[0, 400\)"
    ):
        build_dataset("kinetics", tmp_path)


@pytest.mark.parametrize("name", ["synthetic", "ssv2"])
def test_relative_root_resolves_like_an_absolute_one(synth_webm, monkeypatch, name):
    monkeypatch.chdir(synth_webm.parent)
    root = synth_webm.name if name == "synthetic" else f"{synth_webm.name}/videos"
    kw = {} if name == "synthetic" else {"annotations": f"{synth_webm.name}/validation.json"}
    rel = build_dataset(name, root, "val", crop_size=32, scale_size=48, **kw)
    s = rel[0]
    assert s.error is None, s.error  # read once, not <root>/<root>/<id>.webm
    absolute = build_dataset(
        name, synth_webm.parent / root, "val", crop_size=32, scale_size=48, **kw
    )
    assert torch.equal(absolute[0].clip, s.clip)
