"""Frozen-tower features, computed once: a frozen-tower stage's feature cache and the held-out monitor's.

With a frozen tower, a stage only needs the tower's output for each image and augmented view.
View v of image i is the view epoch v of an uncached run draws for it, so a cache with as many
views as epochs trains on exactly what recomputing the tower would; with fewer views, epoch e
reuses view e mod `views` (in epoch e's own shuffled order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from guie.atomic import torch_save
from guie.data.dataset import view_seeds
from guie.model.backbone import tower_dim
from guie.progress import progress_bar
from guie.runtime import Runtime, gather_shards
from guie.torch_file import DamagedFile, read_torch

if TYPE_CHECKING:
    from guie.data.views import SeededViews


@torch.no_grad()
def tower_features(
    tower: nn.Module,
    dataset: Dataset,
    items: Sequence,
    batch_size: int,
    runtime: Runtime,
    description: str,
    num_workers: int = 0,
) -> torch.Tensor:
    """Tower outputs [len(items), D] float32 on the CPU, in `items` order (dataset[item][0] is the image;
    a dataset with `collate` and `inputs`, like `SeededViews`, makes and finishes its own batches).
    Under torchrun each process embeds every world-th item and they swap results."""
    mine = list(items)[runtime.rank :: runtime.world]
    # own generator: whether features are computed or reused must not move the global RNG (dropout's)
    loader = DataLoader(
        dataset,
        sampler=mine,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate", None),
        pin_memory=runtime.on_gpu,
        generator=torch.Generator(),
    )
    inputs = getattr(dataset, "inputs", lambda batch, runtime: runtime.to_device(batch[0]))
    was_training = tower.training
    tower.eval()
    chunks = [torch.zeros(0, tower_dim(tower), device=runtime.device)]
    with progress_bar(description, len(items), enabled=runtime.main) as advance:
        for batch in loader:
            with runtime.autocast():
                chunks.append(tower(inputs(batch, runtime)).float())
            advance(len(batch[0]) * runtime.world)
    tower.train(was_training)
    return gather_shards(runtime, torch.cat(chunks), len(items)).cpu()


def cache_items(n: int, seed: int, views: int) -> list[tuple[int, int]]:
    """(index, augmentation seed) of every image's views, view-major: view v = epoch v's draw."""
    items = []
    for v in range(views):
        order, seeds = view_seeds(seed, v, n)
        by_index = dict(zip(order, seeds, strict=True))
        items += [(i, by_index[i]) for i in range(n)]
    return items


def build_view_cache(
    tower: nn.Module,
    views: SeededViews,
    seed: int,
    n_views: int,
    batch_size: int,
    runtime: Runtime,
    num_workers: int,
    path: Path,
    fingerprint: str,
) -> torch.Tensor:
    """[views, N, D] features of every image's augmented views, kept at `path` so a resumed run skips this."""
    if path.is_file():
        try:
            state = read_torch(path, "", keys=("fingerprint", "features"))
        except DamagedFile:  # a cache: computed again and replaced below
            state = {}
        if state.get("fingerprint") == fingerprint:
            return state["features"]
    n = len(views)
    feats = tower_features(
        tower,
        views,
        cache_items(n, seed, n_views),
        batch_size,
        runtime,
        f"caching tower features ({n_views} view(s))",
        num_workers,
    )
    feats = feats.view(n_views, n, -1)
    if runtime.main:
        torch_save({"fingerprint": fingerprint, "features": feats}, path)
    return feats


class CachedViews(Dataset):
    """Item (index, seed) -> (cached features of the view for the current epoch, label, index)."""

    def __init__(self, features: torch.Tensor, labels: Sequence[int]):
        self.features, self.labels = features, list(labels)
        self.view = features[0]

    def set_epoch(self, epoch: int) -> None:
        self.view = self.features[epoch % len(self.features)]

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, _ = item
        return self.view[index], self.labels[index], index

    def inputs(self, batch: Sequence[torch.Tensor], runtime: Runtime) -> torch.Tensor:
        """A collated batch's features on the training device."""
        return runtime.to_device(batch[0])
