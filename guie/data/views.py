"""Training views: a seeded, augmented view of each manifest image, batched for the loader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from guie.data.augment import BatchAugment, draw, per_image
from guie.data.dataset import ManifestDataset
from guie.params.train import AugmentParams

if TYPE_CHECKING:
    from guie.runtime import Runtime


class SeededViews(Dataset):
    """Item (index, seed) -> (uint8 view after the per-image augmentations, the view's augmentation
    parameters, label, index). The view's randomness is drawn from `seed` alone (`augment.draw`), so it
    does not depend on worker count, prefetching, the store or resumption.

    `collate` makes a batch: with `batch_augment` the loader finishes the views (on the CPU, in its
    workers); without, the batch stays uint8 with its parameter rows and `inputs` finishes it on the
    training device (the GPU path: a quarter of float32's bytes cross the bus)."""

    def __init__(self, base: ManifestDataset, params: AugmentParams, batch_augment: BatchAugment, on_device: bool):
        self.base, self.params = base, params
        self.batch_augment, self.on_device = batch_augment, on_device

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        index, seed = item
        row = draw(seed, self.params)
        return per_image(self.base.prepared(index), row), row, self.base.label(index), index

    def collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(views, labels, indices, parameter rows): finished float views and no rows, or, on the device
        path, uint8 views and their rows."""
        views, rows, labels, indices = zip(*items, strict=True)
        views, rows = torch.stack(views), torch.stack(rows)
        if not self.on_device:
            views, rows = self.batch_augment(views, rows), rows[:, :0]
        return views, torch.tensor(labels), torch.tensor(indices), rows

    def inputs(self, batch: Sequence[torch.Tensor], runtime: Runtime) -> torch.Tensor:
        """A collated batch's finished views on the training device."""
        views, rows = runtime.to_device(batch[0]), batch[3]
        if rows.shape[1]:
            views = runtime.to_device(self.batch_augment(views, rows))
        return views
