"""The paper's training augmentations: each one does its job, and views are a function of their seed."""

import dataclasses

import pytest
import torch

from guie.data.augment import RGBShift, TrainAugment, build_train_augment
from guie.data.dataset import EpochBatches, ManifestDataset, SeededViews
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalPreprocess, ResizeToUint8
from guie.params.train import AugmentParams

NONE = AugmentParams(hflip=0, jpeg=0, affine=0, brightness_contrast=0, rgb_shift=0, cutout=0)


def _image(size=64):
    torch.manual_seed(0)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8)


def test_all_probabilities_zero_is_the_identity():
    x = _image()
    assert torch.equal(build_train_augment(NONE)(x), x)


@pytest.mark.parametrize(
    "on, check",
    [
        ({"hflip": 1.0}, lambda x, y: torch.equal(y, x.flip(-1))),
        (
            {"jpeg": 1.0, "jpeg_quality": (10, 10)},
            lambda x, y: y.shape == x.shape and 5 < (y.float() - x.float()).abs().mean() < 100,
        ),
        ({"affine": 1.0, "rotate": 90.0}, lambda x, y: y.shape == x.shape and not torch.equal(x, y)),
        (
            {"brightness_contrast": 1.0, "brightness": 0.9, "contrast": 0.0},
            lambda x, y: y.float().mean() != x.float().mean(),
        ),
        (
            {"cutout": 1.0, "cutout_area": (0.2, 0.2)},
            lambda x, y: 0.15 < ((y == 0).all(0) & (x != 0).any(0)).float().mean() < 0.25,
        ),
    ],
)
def test_each_augmentation_does_its_job(on, check):
    x = _image()
    torch.manual_seed(1)
    assert check(x, build_train_augment(dataclasses.replace(NONE, **on))(x))


def test_rgb_shift_adds_one_bounded_offset_per_channel():
    x = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    torch.manual_seed(2)
    y = RGBShift(limit=20)(x).int() - 100
    offsets = y[:, 0, 0]
    assert torch.equal(y, offsets.view(3, 1, 1).expand(3, 8, 8)) and offsets.abs().max() <= 20
    assert len(set(offsets.tolist())) > 1  # independent channels
    assert torch.equal(
        RGBShift(limit=255)(torch.full((3, 2, 2), 255, dtype=torch.uint8)).max(), torch.tensor(255, dtype=torch.uint8)
    )


def _views(tmp_path, n=4):
    from PIL import Image

    rows = []
    for i in range(n):
        Image.fromarray(_image(40 + i).permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        rows.append(
            ManifestRow(
                path=f"{i}.png",
                sha256="",
                source="s",
                domain="d",
                label=f"c{i % 2}",
                split="train",
                width=40 + i,
                height=40 + i,
            )
        )
    pre = EvalPreprocess(32, "squash", (0.5,) * 3, (0.25,) * 3)
    return SeededViews(
        ManifestDataset(rows, tmp_path, TrainAugment(pre), {"c0": 0, "c1": 1}, prepare=ResizeToUint8(pre), cache=True)
    )


def test_same_seed_same_view_whatever_the_global_rng_or_cache(tmp_path):
    views = _views(tmp_path)
    torch.manual_seed(5)
    first, label, index = views[(2, 1234)]
    torch.manual_seed(6)  # the global generator must not matter, and must not be advanced
    state = torch.get_rng_state()
    again, _, _ = views[(2, 1234)]  # now from the cache
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again) and (label, index) == (0, 2)
    assert not torch.equal(first, views[(2, 1235)][0])


def test_epoch_batches_resume_mid_epoch_and_reshuffle_each_epoch():
    batches = EpochBatches(10, 3, seed=7, drop_last=True)
    batches.set_epoch(1)
    whole = list(batches)
    assert len(whole) == batches.per_epoch == 3 and all(len(b) == 3 for b in whole)
    batches.set_epoch(1, start=2)
    assert list(batches) == whole[2:]
    batches.set_epoch(2)
    assert list(batches) != whole
    assert EpochBatches(10, 3, seed=7, drop_last=False).per_epoch == 4


def test_augment_params_are_read_and_checked():
    from support import tiny_params_dict

    from guie.errors import GuieError
    from guie.params.load import parse_params

    raw = tiny_params_dict()
    raw["train"]["augment"] = {"jpeg_quality": [30, 60], "rgb_shift": 0.0}
    assert parse_params(raw).train.augment == dataclasses.replace(AugmentParams(), jpeg_quality=(30, 60), rgb_shift=0.0)
    raw["train"]["augment"] = {"cutout": 1.5}
    with pytest.raises(GuieError, match="train.augment.cutout"):
        parse_params(raw)
