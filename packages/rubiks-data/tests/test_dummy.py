import pytest
import torch

from rubiks_data import RandomVideoDataset, build_dataset


def test_dummy_clips_are_fixed_per_video_and_shared_by_splits():
    train = build_dataset("dummy", ".", "train", num_segments=4, crop_size=16, seed=3)
    val = build_dataset(
        "random", ".", "val", num_segments=4, crop_size=16, seed=3, protocol="2clip"
    )
    assert len(train) == 32 and train.num_classes == 10 and train.num_views == 1
    assert val.num_views == 6 and val.labels == train.labels
    a, b = train[7], val[7]
    assert a.clip.shape == (1, 4, 3, 16, 16) and b.clip.shape == (6, 4, 3, 16, 16)
    assert torch.equal(a.clip[0], b.clip[5]) and torch.equal(a.clip, train[7].clip)
    assert not torch.equal(train[7].clip, train[8].clip)
    assert a.label == train.labels[7] and a.error is None


def test_dummy_refuses_bad_input():
    with pytest.raises(ValueError, match="num_videos"):
        RandomVideoDataset(0)
    with pytest.raises(ValueError, match="does not take"):
        build_dataset("dummy", ".", "train", transform=object())
    ds = RandomVideoDataset(3, num_segments=2, crop_size=8)
    assert torch.equal(ds[-1].clip, ds[2].clip) and ds[-3].video_id == "random00000"
    for bad in (3, -4):
        with pytest.raises(IndexError, match=f"index {bad} out of range for 3 videos"):
            ds[bad]
    for bad in (slice(0, 2), 1.0, "1"):
        with pytest.raises(TypeError, match=r"must be an integer.*Subset"):
            ds[bad]
