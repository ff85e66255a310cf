"""train.cache_images: images are cached only where they are revisited, and only when the caches
fit in memory; a cache that does not fit falls back to decoding, with the same results."""

import dataclasses
from pathlib import Path

import pytest
from support import train_in

import guie.training.loader
import guie.training.monitor
from guie.data.dataset import ManifestDataset
from guie.training.loader import image_caches
from guie.training.spec import RunSpec

PLENTY = 1 << 50


def _spec(stage: str, epochs: int, cached_views: int = 0) -> RunSpec:
    return RunSpec(
        stage,
        0,
        epochs,
        tower_trainable=stage == "finetune",
        head_trainable=True,
        cached_views=cached_views,
        checkpoint=Path("x"),
        fingerprint="",
        fresh=False,
    )


def _train(params, **changes):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def _with_stage(params, name, **changes):
    """`params` with train.stages.<name> changed."""
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return _train(params, stages=stages)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_spec("head", 5, cached_views=1), (False, False)),  # the feature pass visits each image once per view
        (_spec("head", 5, cached_views=0), (True, False)),  # the tower runs every epoch; held-out features once
        (_spec("head", 1, cached_views=0), (False, False)),  # one epoch revisits nothing
        (_spec("finetune", 4), (True, True)),
    ],
)
def test_only_revisited_images_are_cached(tiny_params, spec, expected):
    train, heldout, warnings = image_caches(tiny_params, spec, 1000, 300, PLENTY, 224)
    assert (train, heldout) == expected and warnings == []
    assert image_caches(_train(tiny_params, cache_images=False), spec, 1000, 300, PLENTY, 224) == (False, False, [])


def test_caches_that_do_not_fit_fall_back_with_a_warning_naming_the_knob(tiny_params):
    params = _train(tiny_params, num_workers=2)
    # the folder source: 100k images, 2 workers, a 24 GiB machine
    train, heldout, warnings = image_caches(params, _spec("finetune", 4), 100_000, 30_000, 24 * 2**30, 224)
    assert (train, heldout) == (False, True)  # held-out images fit in what the training images could not use
    (warning,) = warnings
    assert warning.startswith("finetune: train.cache_images: not caching the training images: 100000 images")
    assert "x 2 copies (processes x train.num_workers)" in warning
    # 2 processes, each with 2 workers: 4 copies
    _, _, warnings = image_caches(params, _spec("finetune", 4), 30_000, 10, 24 * 2**30, 224, processes=2)
    assert "x 4 copies" in warnings[0]


@pytest.fixture
def datasets(monkeypatch):
    """Every ManifestDataset training creates, to look at its cache afterwards."""
    made = []

    class Recorded(ManifestDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(guie.training.loader, "ManifestDataset", Recorded)  # training images
    monkeypatch.setattr(guie.training.monitor, "ManifestDataset", Recorded)  # held-out images
    return made


def test_stage_one_s_feature_pass_and_held_out_pass_cache_nothing(trained_project, tmp_path, datasets, monkeypatch):
    params, layout = trained_project
    assert params.train.cache_images and params.train.stages["head"].cached_views == 1
    monkeypatch.setattr(guie.training.loader, "available_memory", lambda: PLENTY)
    train_in(params, layout, "head", out=tmp_path / "head.pt", metrics_dir=tmp_path / "m")
    assert len(datasets) == 2  # training images, held-out images
    assert all(d.cache is None for d in datasets)
    assert (tmp_path / "head.pt").read_bytes() == layout.trained("head").read_bytes()


def test_stage_two_caches_when_it_fits_and_falls_back_to_identical_weights_when_not(
    trained_project, tmp_path, datasets, monkeypatch, capsys
):
    params, layout = trained_project
    params = _with_stage(params, "finetune", epochs=2)
    outs = {}
    for memory in (PLENTY, 0):
        datasets.clear()
        monkeypatch.setattr(guie.training.loader, "available_memory", lambda memory=memory: memory)
        outs[memory] = tmp_path / f"finetune_{memory}.pt"
        train_in(
            params,
            layout,
            "finetune",
            out=outs[memory],
            metrics_dir=tmp_path / f"m{memory}",
            checkpoint=tmp_path / f"c{memory}.pt",
        )
        if memory:
            trained_on, heldout = datasets
            assert len(heldout.cache) == len(heldout)  # embedded every epoch: all cached
            assert 0 < len(trained_on.cache) <= len(trained_on)  # the images drawn so far (drop_last skips a few)
            assert "train.cache_images" not in capsys.readouterr().err
        else:
            assert all(d.cache is None for d in datasets)
            err = capsys.readouterr().err
            assert "finetune: train.cache_images: not caching the training images" in err
            assert "finetune: train.cache_images: not caching the held-out images" in err
    assert outs[PLENTY].read_bytes() == outs[0].read_bytes()
