"""The paper's training augmentations, batched: each one does its job, keeps the distribution
torchvision's per-sample pipeline drew, and a view is a function of its seed alone."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from guie.data.augment import CUTOUT_LOG_RATIO, BatchAugment, C, _affine, draw, per_image, uniforms
from guie.data.dataset import EpochBatches, ManifestDataset
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8
from guie.data.views import SeededViews
from guie.params.train import AugmentParams
from guie.runtime import Runtime

NONE = AugmentParams(hflip=0, jpeg=0, affine=0, brightness_contrast=0, rgb_shift=0, cutout=0)
PRE = EvalPreprocess(64, "squash", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CPU = Runtime(torch.device("cpu"), None, False)
N_DRAWS = 4000


def _image(size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)


def _augment(x: torch.Tensor, params: AugmentParams, seed: int = 1) -> torch.Tensor:
    """One view through both halves, back in 0..255."""
    row = draw(seed, params)
    out = BatchAugment(PRE)(per_image(x, row).unsqueeze(0), row.unsqueeze(0))[0]
    return out * PRE.std[0] + PRE.mean[0]


def _rows(params: AugmentParams, n: int = N_DRAWS) -> torch.Tensor:
    return torch.stack([draw(seed, params) for seed in range(n)])


def test_all_probabilities_zero_is_the_normalisation_alone():
    x = _image()
    row = draw(3, NONE)
    assert torch.equal(per_image(x, row), x)
    assert torch.equal(BatchAugment(PRE)(x.unsqueeze(0), row.unsqueeze(0)), PRE.normalize(x.float().unsqueeze(0)))


@pytest.mark.parametrize(
    "on, check",
    [
        ({"hflip": 1.0}, lambda x, y: torch.allclose(y, x.flip(-1).float(), atol=1e-4)),
        (
            {"jpeg": 1.0, "jpeg_quality": (10, 10)},
            lambda x, y: y.shape == x.shape and 5 < (y - x.float()).abs().mean() < 100,
        ),
        ({"affine": 1.0, "rotate": 90.0}, lambda x, y: y.shape == x.shape and not torch.allclose(x.float(), y)),
        (
            {"brightness_contrast": 1.0, "brightness": 0.9, "contrast": 0.0},
            lambda x, y: abs(y.mean() - x.float().mean()) > 1,
        ),
        (
            {"cutout": 1.0, "cutout_area": (0.2, 0.2)},
            lambda x, y: 0.15 < ((y.abs() < 1e-3).all(0) & (x != 0).any(0)).float().mean() < 0.25,
        ),
    ],
)
def test_each_augmentation_does_its_job(on, check):
    x = _image()
    assert check(x, _augment(x, dataclasses.replace(NONE, **on)))


def test_rgb_shift_adds_one_bounded_offset_per_channel():
    x = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    params = dataclasses.replace(NONE, rgb_shift=1.0, rgb_shift_limit=20)
    offsets = [(_augment(x, params, seed) - 100).round() for seed in range(20)]
    for y in offsets:
        assert torch.equal(y, y[:, :1, :1].expand(3, 8, 8)) and y.abs().max() <= 20
    assert len({tuple(y[:, 0, 0].tolist()) for y in offsets}) > 1 and any(
        len(set(y[:, 0, 0].tolist())) > 1 for y in offsets
    )
    saturated = _augment(
        torch.full((3, 2, 2), 255, dtype=torch.uint8), dataclasses.replace(params, rgb_shift_limit=255)
    )
    assert saturated.max() <= 255 + 1e-3


@pytest.mark.parametrize("angle, tx, scale", [(0.0, 0.0, 1.0), (90.0, 0.0, 1.0), (15.0, 0.1, 0.8), (-7.0, -0.05, 1.2)])
def test_affine_matches_torchvision_nearest(angle, tx, scale):
    """Same map as torchvision's affine (nearest, zeros outside): equal but for pixels whose source sits
    on a rounding boundary."""
    x = _image(64).unsqueeze(0)
    row = draw(0, NONE)
    row[C["angle"]], row[C["tx"]], row[C["ty"]], row[C["scale"]] = angle, tx, -tx / 2, scale
    ours = _affine(x, row.unsqueeze(0))[0]
    theirs = TF.affine(x[0], angle=angle, translate=[tx * 64, -tx / 2 * 64], scale=scale, shear=[0.0, 0.0])
    assert (ours == theirs).float().mean() > 0.97


def test_uniforms_are_uniform_and_a_function_of_the_seed():
    u = np.concatenate([uniforms(seed, 21) for seed in range(2000)])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert ks_2samp(u, np.random.default_rng(0).random(len(u))).pvalue > 1e-3
    assert np.array_equal(uniforms(2**62 + 5, 21), uniforms(2**62 + 5, 21))
    assert not np.array_equal(uniforms(1, 21), uniforms(2, 21))


def test_probabilities_are_the_params():
    params = AugmentParams(hflip=0.5, jpeg=0.3, affine=0.9, brightness_contrast=0.7, rgb_shift=0.2, cutout=0.4)
    rows = _rows(params)
    for column, p in [
        ("flip", 0.5),
        ("jpeg", 0.3),
        ("affine", 0.9),
        ("color", 0.7),
        ("rgb", 0.2),
        ("cutout", 0.4),
        ("contrast_first", 0.5),
    ]:
        assert abs(rows[:, C[column]].mean().item() - p) < 0.03, column


def _torchvision_draws(transform: v2.Transform, n: int = N_DRAWS) -> list[dict]:
    torch.manual_seed(0)
    image = torch.zeros(3, 224, 224, dtype=torch.uint8)
    return [transform.make_params([image]) for _ in range(n)]


def _same_distribution(ours, theirs) -> None:
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert ks_2samp(ours, theirs).pvalue > 1e-3, (ours.min(), ours.max(), theirs.min(), theirs.max())


def test_affine_draws_as_random_affine():
    p = AugmentParams()
    rows = _rows(p)
    theirs = _torchvision_draws(v2.RandomAffine(degrees=p.rotate, translate=(p.shift, p.shift), scale=(0.8, 1.2)))
    _same_distribution(rows[:, C["angle"]], [d["angle"] for d in theirs])
    _same_distribution(rows[:, C["scale"]], [d["scale"] for d in theirs])
    # torchvision rounds the shift to whole pixels
    _same_distribution((rows[:, C["tx"]] * 224).round(), [d["translate"][0] for d in theirs])
    _same_distribution((rows[:, C["ty"]] * 224).round(), [d["translate"][1] for d in theirs])


def test_colour_draws_as_color_jitter():
    p = AugmentParams()
    rows = _rows(p)
    theirs = _torchvision_draws(v2.ColorJitter(brightness=p.brightness, contrast=p.contrast))
    _same_distribution(rows[:, C["brightness"]], [d["brightness_factor"] for d in theirs])
    _same_distribution(rows[:, C["contrast"]], [d["contrast_factor"] for d in theirs])
    contrast_first = [d["fn_idx"].tolist().index(1) < d["fn_idx"].tolist().index(0) for d in theirs]
    assert abs(rows[:, C["contrast_first"]].mean().item() - np.mean(contrast_first)) < 0.04


def test_jpeg_quality_and_rgb_offsets_are_uniform_integers_over_the_whole_range():
    p = AugmentParams(jpeg_quality=(50, 95), rgb_shift_limit=15)
    rows = _rows(p)
    theirs = _torchvision_draws(v2.JPEG(quality=[50, 95]))
    _same_distribution(rows[:, C["quality"]], [d["quality"] for d in theirs])
    assert set(rows[:, C["quality"]].tolist()) == set(range(50, 96))
    for channel in "rgb":
        assert set(rows[:, C[channel]].tolist()) == set(range(-15, 16))


def test_cutout_draws_as_random_erasing():
    p = AugmentParams(cutout_area=(0.02, 0.15))
    rows = _rows(p)
    theirs = _torchvision_draws(v2.RandomErasing(p=1.0, scale=p.cutout_area, value=0.0))
    holes = [d["h"] * d["w"] / 224**2 for d in theirs]
    ratios = [np.log(d["h"] / d["w"]) for d in theirs]
    from guie.data.augment import _cutout_holes

    ours = _cutout_holes(rows, 224, 224)
    areas = ours.float().mean((1, 2))
    heights, widths = ours.any(2).sum(1).float(), ours.any(1).sum(1).float()
    _same_distribution(areas, holes)
    _same_distribution((heights / widths).log(), ratios)
    assert (
        np.all(CUTOUT_LOG_RATIO[0] <= rows[:, C["log_ratio"]].numpy())
        and rows[:, C["log_ratio"]].max() <= CUTOUT_LOG_RATIO[1]
    )


def _views(tmp_path, n=4, on_device=False, params=None):
    from PIL import Image

    rows = []
    for i in range(n):
        Image.fromarray(_image(40 + i, seed=i).permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        rows.append(ManifestRow(f"{i}.png", "", "s", "d", f"c{i % 2}", "train", 40 + i, 40 + i))
    pre = EvalPreprocess(32, "squash", (0.5,) * 3, (0.25,) * 3)
    base = ManifestDataset(rows, tmp_path, Normalize(pre), {"c0": 0, "c1": 1}, prepare=ResizeToUint8(pre))
    return SeededViews(base, params or AugmentParams(), BatchAugment(pre), on_device=on_device)


def test_same_seed_same_view_whatever_the_global_rng_or_the_batch(tmp_path):
    views = _views(tmp_path)
    torch.manual_seed(6)
    state = torch.get_rng_state()
    alone = views.collate([views[(2, 1234)]])
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is neither read nor advanced
    among = views.collate([views[(0, 99)], views[(2, 1234)], views[(3, 5)]])
    assert torch.equal(alone[0][0], among[0][1]) and alone[1].tolist() == [0] and alone[2].tolist() == [2]
    assert not torch.equal(alone[0][0], views.collate([views[(2, 1235)]])[0][0])


def test_the_device_path_finishes_the_same_views_after_the_transfer(tmp_path):
    """On a GPU the batch crosses as uint8 with its rows and is augmented there; on the CPU (here) both
    paths must give the same views."""
    items = [(i, 1000 + i) for i in range(4)]
    in_loader = _views(tmp_path)
    on_device = _views(tmp_path, on_device=True)
    batch = on_device.collate([on_device[item] for item in items])
    assert batch[0].dtype == torch.uint8 and batch[3].shape == (4, len(C))
    expected = in_loader.collate([in_loader[item] for item in items])
    assert expected[3].shape == (4, 0)
    assert torch.equal(on_device.inputs(batch, CPU), in_loader.inputs(expected, CPU))


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


def test_a_batch_is_augmented_view_by_view_whatever_its_size():
    """On a CPU the batch is augmented in chunks: every view comes out as if augmented alone."""
    from guie.data.augment import CPU_CHUNK

    n = 2 * CPU_CHUNK + 3
    views = torch.stack([_image(seed=i) for i in range(n)])
    rows = torch.stack([draw(100 + i, AugmentParams()) for i in range(n)])
    together = BatchAugment(PRE)(views, rows)
    alone = torch.cat([BatchAugment(PRE)(views[i : i + 1], rows[i : i + 1]) for i in range(n)])
    assert torch.equal(together, alone)
