"""Test protocols and training augmentation on PIL frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rubiks_data.geometry import multiscale_crop_candidates, sample_multiscale_crop
from rubiks_data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestTransform,
    TrainTransform,
    get_protocol,
    normalize,
    resize_frame,
)


def frames(n: int, w: int = 427, h: int = 240, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def manual(img: Image.Image, box) -> torch.Tensor:
    x, y, w, h = box
    a = np.asarray(img.crop((x, y, x + w, y + h)), dtype=np.float32) / 255.0
    a = (a - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)


def test_resize_frame_pil_bilinear_and_untouched():
    (img,) = frames(1)
    out = resize_frame(img, 256)
    assert out.size == (455, 256)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((455, 256), Image.BILINEAR)))
    assert resize_frame(out, 256) is out  # short side already 256: the same object
    assert resize_frame(img, None) is img


def test_normalize_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms.functional")
    (img,) = frames(1, 40, 30)
    ref = tv.normalize(tv.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(normalize(np.asarray(img)), ref)
    with pytest.raises(ValueError, match="uint8"):
        normalize(np.zeros((4, 4, 3), np.float32))


def test_one_clip_center_crop():
    fr = frames(8)
    clip = get_protocol("1clip")(fr, 8)
    assert clip.shape == (1, 8, 3, 224, 224) and clip.dtype == torch.float32
    resized = resize_frame(fr[5], 256)
    assert torch.allclose(clip[0, 5], manual(resized, (116, 16, 224, 224)), atol=1e-6)


def test_two_clip_three_crops_clip_major():
    fr = frames(16)
    t = get_protocol("2clip")
    assert t.num_views == 6 and t.indices(50, 8) == [
        3,
        9,
        15,
        21,
        28,
        34,
        40,
        46,
        0,
        6,
        12,
        18,
        25,
        31,
        37,
        43,
    ]
    clip = t(fr, 8)
    assert clip.shape == (6, 8, 3, 224, 224)
    boxes = [(0, 16, 224, 224), (228, 16, 224, 224), (114, 16, 224, 224)]
    for c in range(2):
        for k, box in enumerate(boxes):
            ref = manual(resize_frame(fr[c * 8 + 2], 256), box)
            assert torch.allclose(clip[c * 3 + k, 2], ref, atol=1e-6)


def test_crop_size_parameter_and_full_res():
    clip = get_protocol("2clip", crop_size=256)(frames(4), 2)
    assert clip.shape == (6, 2, 3, 256, 256)
    small = get_protocol("1clip", crop_size=112, scale_size=128)(frames(2), 2)
    assert small.shape == (1, 2, 3, 112, 112)


def test_protocol_errors():
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("3clip")
    with pytest.raises(ValueError, match="expected 16 frames"):
        get_protocol("2clip")(frames(8), 8)
    with pytest.raises(ValueError, match="num_crops"):
        TestTransform(num_crops=2)
    with pytest.raises(ValueError, match="differ in size"):
        get_protocol("1clip")(frames(1, 427, 240) + frames(1, 300, 240), 2)


def test_dense_protocol():
    t = get_protocol("dense")
    assert t.num_views == 30
    assert len(t.indices(100, 8)) == 80


def test_train_transform_deterministic_and_from_candidates():
    fr = frames(8)
    t = TrainTransform()
    a = t(fr, 8, np.random.default_rng(7))
    b = t(fr, 8, np.random.default_rng(7))
    assert a.shape == (1, 8, 3, 224, 224) and torch.equal(a, b)
    # the crop is the box sample_multiscale_crop draws first, resized with PIL bilinear
    box = sample_multiscale_crop(455, 256, np.random.default_rng(7))
    assert box in multiscale_crop_candidates(455, 256)
    x, y, w, h = box
    img = resize_frame(fr[3], 256).crop((x, y, x + w, y + h)).resize((224, 224), Image.BILINEAR)
    assert torch.equal(a[0, 3], normalize(np.asarray(img)))


def test_train_flip_off_by_default_on_when_asked():
    fr = frames(2)
    outs = [TrainTransform(flip=True)(fr, 2, np.random.default_rng(s)) for s in range(12)]
    plain = [TrainTransform()(fr, 2, np.random.default_rng(s)) for s in range(12)]
    flipped = sum(not torch.equal(o, p) for o, p in zip(outs, plain, strict=True))
    assert 0 < flipped < 12
    for o, p in zip(outs, plain, strict=True):
        assert torch.equal(o, p) or torch.equal(o, p.flip(-1))


@pytest.mark.parametrize("protocol", ["1clip", "2clip", "dense"])
def test_crop_larger_than_scaled_short_side_is_refused(protocol):
    with pytest.raises(ValueError, match="crop_size 100 is larger than scale_size 64"):
        get_protocol(protocol, crop_size=100, scale_size=64)
    assert get_protocol(protocol, crop_size=64, scale_size=64).crop_size == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scales=()), "scales must be fractions"),
        (dict(scales=(1.0, 1.5)), "scales must be fractions"),
        (dict(max_distort=-1), "max_distort must be >= 0"),
        (dict(input_size=0), "input_size must be positive"),
        (dict(scale_size=0), "scale_size must be positive"),
    ],
)
def test_train_transform_refuses_settings_that_fail_every_clip(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainTransform(**kwargs)
