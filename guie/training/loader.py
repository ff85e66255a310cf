"""What the loop trains on: the manifest's split, the image-cache decision, each epoch's batches
and the DataLoader (of images, or of a frozen-tower stage's cached tower features)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from guie.data.augment import TrainAugment
from guie.data.dataset import (
    CacheRequest,
    EpochBatches,
    ManifestDataset,
    SeededViews,
    available_memory,
    plan_image_cache,
)
from guie.data.manifest import ManifestRow
from guie.data.transforms import ResizeToUint8
from guie.errors import GuieError
from guie.feature_cache import CachedViews, build_view_cache
from guie.progress import console as progress_console
from guie.runtime import Runtime
from guie.training.model import TrainingModel
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params


def split_rows(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """The manifest's training rows and held-out rows; an error if there is nothing to train on."""
    train = [r for r in rows if r.split == "train"]
    heldout = [r for r in rows if r.split == "heldout"]
    if not train:
        raise GuieError("manifest has no training images (split 'train')")
    return train, heldout


def image_caches(
    params: Params,
    spec: RunSpec,
    n_train: int,
    n_heldout: int,
    available: int | None,
    image_size: int,
    processes: int = 1,
) -> tuple[bool, bool, list[str]]:
    """Whether the training images and the held-out images are cached in RAM (`train.cache_images`).

    Only images that are revisited are cached: the training images when the tower runs on every
    batch for several epochs (a stage that trains the tower, or a frozen-tower one with
    `cached_views: 0`; a frozen-tower stage's feature pass visits each image once per view, view
    after view, so a cache would hold every image for one reuse), and the held-out images when the
    tower trains (a frozen tower's are embedded once). The caches must fit in `available` bytes
    (`plan_image_cache`) at `image_size` (the stage's); a warning names the knob if not. Returns
    (cache training images, cache held-out images, warnings)."""
    if not params.train.cache_images:
        return False, False, []
    requests, wanted = [], []
    if not spec.cached_views and spec.epochs > 1:
        requests.append(CacheRequest("training images", n_train, processes * max(1, params.train.num_workers)))
        wanted.append("train")
    if spec.tower_trainable:
        # embedded without workers, sharded between processes
        requests.append(CacheRequest("held-out images", n_heldout))
        wanted.append("heldout")
    decisions, warnings = plan_image_cache(requests, image_size, available)
    chosen = dict(zip(wanted, decisions, strict=True))  # one decision per request
    return chosen.get("train", False), chosen.get("heldout", False), [f"{spec.stage}: {w}" for w in warnings]


def image_caches_here(
    params: Params, spec: RunSpec, n_train: int, n_heldout: int, runtime: Runtime, image_size: int
) -> tuple[bool, bool]:
    """`image_caches` for this machine's free memory and processes; the main process prints the warnings."""
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world))  # each holds its own caches
    cache_train, cache_heldout, warnings = image_caches(
        params, spec, n_train, n_heldout, available_memory(), image_size, processes_here
    )
    for warning in warnings if runtime.main else []:
        progress_console.print(warning, markup=False, highlight=False)
    return cache_train, cache_heldout


def training_views(
    params: Params, model: TrainingModel, train_rows: list[ManifestRow], project_root: Path, cache: bool
) -> SeededViews:
    """(index, seed) -> augmented view of a training image, its class index, its index."""
    labels = {c: i for i, c in enumerate(model.classes)}
    pre = model.embedder.preprocess
    augment = TrainAugment(pre, params.train.augment)
    return SeededViews(
        ManifestDataset(train_rows, project_root, augment, labels, prepare=ResizeToUint8(pre), cache=cache)
    )


def epoch_batches(spec: RunSpec, n: int, batch_size: int, runtime: Runtime) -> EpochBatches:
    """Each epoch's shuffled batches of this process's share of the `n` training views."""
    # BatchNorm needs > 1 sample per batch; processes need equal chunks
    drop_last = n > batch_size or runtime.world > 1
    if runtime.world > 1 and n < batch_size:
        raise GuieError(
            f"{spec.stage}: {n} training images are fewer than one global batch (train.batch_size {batch_size})"
        )
    return EpochBatches(n, batch_size, spec.seed, drop_last, runtime.rank, runtime.world)


def epoch_loader(
    params: Params, spec: RunSpec, tower: nn.Module, views: SeededViews, batches: EpochBatches, runtime: Runtime
) -> DataLoader:
    """The batches' views, or with `spec.cached_views` the frozen tower's cached features of them
    (built first, or read back from `spec.feature_cache`)."""
    dataset, num_workers = views, params.train.num_workers
    if spec.cached_views:
        features = build_view_cache(
            tower,
            views,
            spec.seed,
            spec.cached_views,
            params.train.batch_size,
            runtime,
            num_workers,
            spec.feature_cache,
            spec.fingerprint,
        )
        # in memory: no workers
        dataset, num_workers = CachedViews(features, [views.base.label(i) for i in range(len(views))]), 0
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # keeps each worker's image cache alive
        pin_memory=runtime.on_gpu,
        generator=torch.Generator().manual_seed(spec.seed),  # leaves the global RNG (dropout's) alone
    )
