"""What the loop trains on: the manifest's split, the prepared-image store, each epoch's batches
and the DataLoader (of images, or of a frozen-tower stage's cached tower features)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader

from guie.data.augment import BatchAugment
from guie.data.dataset import EpochBatches, ManifestDataset
from guie.data.manifest import ManifestRow
from guie.data.prepared import PreparedStore
from guie.data.transforms import Normalize, ResizeToUint8
from guie.data.views import SeededViews
from guie.errors import GuieError
from guie.feature_cache import CachedViews, FeaturePass, ViewCache, build_view_cache
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


def prepared_store(params: Params, model: TrainingModel, spec: RunSpec) -> PreparedStore | None:
    """The prepared-image store under `spec.prepared_root` for the stage's geometry, holding every
    image the run reads (built now where it lacks some: once per machine, whichever process comes
    first); None without `train.prepared_store` or a `prepared_root`."""
    if not params.train.prepared_store or spec.prepared_root is None:
        return None
    store = PreparedStore(spec.prepared_root, model.embedder.preprocess)
    store.ensure(spec.train_rows + spec.heldout, spec.project_root)
    return store


def training_views(
    params: Params, model: TrainingModel, spec: RunSpec, store: PreparedStore | None, runtime: Runtime
) -> SeededViews:
    """(index, seed) -> view of a training image (see `SeededViews`), its class index, its index."""
    labels = {c: i for i, c in enumerate(model.classes)}
    pre = model.embedder.preprocess
    base = ManifestDataset(
        spec.train_rows, spec.project_root, Normalize(pre), labels, prepare=ResizeToUint8(pre), store=store
    )
    where = params.train.augment_on
    on_device = where == "device" or (where == "auto" and runtime.on_gpu)
    return SeededViews(base, params.train.augment, BatchAugment(pre), on_device=on_device)


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
    (built first, or read back from `spec.feature_cache`). The dataset's `inputs(batch, runtime)` puts
    a batch on the device, finished."""
    dataset, num_workers, collate = views, params.train.num_workers, views.collate
    if spec.cached_views:
        run = FeaturePass(batch_size=params.train.batch_size, num_workers=num_workers)
        cache = ViewCache(
            path=spec.feature_cache, fingerprint=spec.fingerprint, seed=spec.seed, views=spec.cached_views
        )
        features = build_view_cache(tower, views, runtime, run, cache)
        # memory-mapped (one copy per node, in the page cache): no workers
        dataset, num_workers = CachedViews(features, [views.base.label(i) for i in range(len(views))]), 0
        collate = None
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers and runtime.on_gpu else None,  # batches queued ahead of the GPU
        pin_memory=runtime.on_gpu,
        generator=torch.Generator().manual_seed(spec.seed),  # leaves the global RNG (dropout's) alone
    )
