"""Frozen-tower features, computed once: a frozen-tower stage's feature cache and the held-out monitor's.

With a frozen tower, a stage only needs the tower's output for each image and augmented view.
View v of image i is the view epoch v of an uncached run draws for it, so a cache with as many
views as epochs trains on exactly what recomputing the tower would; with fewer views, epoch e
reuses view e mod `views` (in epoch e's own shuffled order).

One copy per node: the processes of a run each embed their share, the main process gathers the
shares and writes the cache file once, and every process memory-maps that file, so the page cache
holds the features once however many processes train on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from guie.data.dataset import view_seeds
from guie.model.backbone import tower_dim
from guie.progress import progress_bar
from guie.runtime import Runtime, barrier, gather_shards
from guie.streamed_save import save_streamed
from guie.torch_file import DamagedFile, read_torch

if TYPE_CHECKING:
    from guie.data.views import SeededViews

# bytes of each process's rows per collective when the main process gathers: bounds a gather's device memory
GATHER_BYTES = 1 << 24


@dataclass(frozen=True, kw_only=True)
class FeaturePass:
    """How the tower runs over a dataset: its batches, loader workers and progress label."""

    batch_size: int
    num_workers: int = 0
    description: str = "tower features"


@dataclass(frozen=True, kw_only=True)
class ViewCache:
    """A frozen-tower stage's cache of its views: `views` views per image, drawn from `seed`, kept at
    `path` under the run's `fingerprint` (a file with another fingerprint is recomputed)."""

    path: Path
    fingerprint: str
    seed: int
    views: int


def _own_shard(tower: nn.Module, dataset: Dataset, items: Sequence, runtime: Runtime, run: FeaturePass) -> torch.Tensor:
    """This process's rows of the tower outputs (items rank, rank + world, ...), float32 on the device."""
    mine = list(items)[runtime.rank :: runtime.world]
    # own generator: whether features are computed or reused must not move the global RNG (dropout's)
    loader = DataLoader(
        dataset,
        sampler=mine,
        batch_size=run.batch_size,
        num_workers=run.num_workers,
        collate_fn=getattr(dataset, "collate", None),
        pin_memory=runtime.on_gpu,
        generator=torch.Generator(),
    )
    inputs = getattr(dataset, "inputs", lambda batch, runtime: runtime.to_device(batch[0]))
    was_training = tower.training
    tower.eval()
    chunks = [torch.zeros(0, tower_dim(tower), device=runtime.device)]
    with progress_bar(run.description, len(items), enabled=runtime.main) as advance:
        for batch in loader:
            with runtime.autocast():
                chunks.append(tower(inputs(batch, runtime)).float())
            advance(len(batch[0]) * runtime.world)
    tower.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def tower_features(
    tower: nn.Module, dataset: Dataset, items: Sequence, runtime: Runtime, run: FeaturePass
) -> torch.Tensor:
    """Tower outputs [len(items), D] float32 on the CPU of every process, in `items` order
    (dataset[item][0] is the image; a dataset with `collate` and `inputs`, like `SeededViews`,
    makes and finishes its own batches). Under torchrun each process embeds every world-th item
    and they swap results."""
    return gather_shards(runtime, _own_shard(tower, dataset, items, runtime, run), len(items)).cpu()


def _gather_on_main(runtime: Runtime, shard: torch.Tensor, n: int) -> torch.Tensor | None:
    """Rows 0..n-1 on the CPU of the main process (None elsewhere), when process r computed rows
    r, r + world, ... (`shard`); gathered a block at a time, so no device holds them all."""
    if runtime.world == 1:
        return shard.cpu()
    world, per = runtime.world, -(-n // runtime.world)
    step = max(1, GATHER_BYTES // max(1, math.prod(shard.shape[1:]) * shard.element_size()))
    out = torch.empty((n, *shard.shape[1:]), dtype=shard.dtype) if runtime.main else None
    for start in range(0, per, step):
        block = shard.new_zeros((min(step, per - start), *shard.shape[1:]))
        own = shard[start : start + len(block)]
        block[: len(own)] = own
        parts = [torch.empty_like(block) for _ in range(world)] if runtime.main else None
        dist.gather(block, parts, dst=0)
        if out is not None:
            for r, part in enumerate(parts):
                rows = range(r + start * world, n, world)[: len(block)]  # this block's rows of process r
                out[rows.start : rows.stop : world] = part[: len(rows)].cpu()
    return out


def cache_items(n: int, seed: int, views: int) -> list[tuple[int, int]]:
    """(index, augmentation seed) of every image's views, view-major: view v = epoch v's draw."""
    items = []
    for v in range(views):
        order, seeds = view_seeds(seed, v, n)
        by_index = dict(zip(order, seeds, strict=True))
        items += [(i, by_index[i]) for i in range(n)]
    return items


def read_view_cache(cache: ViewCache) -> torch.Tensor | None:
    """The cached [views, N, D] features, memory-mapped (the pages are the page cache's, shared by
    every process that maps the file); None when the file is missing, damaged or from other params."""
    if not cache.path.is_file():
        return None
    try:
        state = read_torch(cache.path, "", keys=("fingerprint", "features"), mmap=True)
    except DamagedFile:  # a cache: computed again and replaced
        return None
    return state["features"] if state.get("fingerprint") == cache.fingerprint else None


@torch.no_grad()
def build_view_cache(
    tower: nn.Module, views: SeededViews, runtime: Runtime, run: FeaturePass, cache: ViewCache
) -> torch.Tensor:
    """[views, N, D] features of every image's augmented views, kept at `cache.path` so a resumed run
    skips this; memory-mapped from there by every process."""
    features = read_view_cache(cache)
    if features is not None:
        return features
    n = len(views)
    label = f"caching tower features ({cache.views} view(s))"
    items = cache_items(n, cache.seed, cache.views)
    shard = _own_shard(tower, views, items, runtime, replace(run, description=label))
    gathered = _gather_on_main(runtime, shard, n * cache.views)
    del shard
    if gathered is not None:
        save_streamed({"fingerprint": cache.fingerprint, "features": gathered.view(cache.views, n, -1)}, cache.path)
        del gathered  # from here on the main process maps the file like the others
    barrier(runtime)
    features = read_view_cache(cache)
    if features is None:
        raise DamagedFile(cache.path, "unreadable right after it was written", "check the disk and run again")
    return features


class CachedViews(Dataset):
    """Item (index, seed) -> (cached features of the view for the current epoch, label, index)."""

    def __init__(self, features: torch.Tensor, labels: Sequence[int]):
        self.features, self.labels = features, torch.as_tensor(labels, dtype=torch.int64)
        self.view = features[0]

    def set_epoch(self, epoch: int) -> None:
        self.view = self.features[epoch % len(self.features)]

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, _ = item
        return self.view[index], int(self.labels[index]), index

    def inputs(self, batch: Sequence[torch.Tensor], runtime: Runtime) -> torch.Tensor:
        """A collated batch's features on the training device."""
        return runtime.to_device(batch[0])
