"""Torch datasets over manifest rows; images decoded exactly as the host decodes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from guie.contract import host_decode
from guie.data.columns import RowColumns
from guie.data.manifest import ManifestRow

if TYPE_CHECKING:
    from guie.data.prepared import PreparedStore

Transform = Callable[[torch.Tensor], torch.Tensor]


class ManifestDataset(Dataset):
    """(image, label index) pairs: decode -> `prepare` (deterministic) -> `transform`.

    With a prepared-image `store` (built for these rows), the prepared image is read from it instead
    of decoding the original again: the same bytes, without the decode and resize.
    `labels` maps class name -> index; without it the label is -1. The rows are kept as columns
    (`RowColumns`): loader workers index them without copying their parent's pages.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        project_root: Path,
        transform: Transform,
        labels: dict[str, int] | None = None,
        prepare: Transform | None = None,
        store: PreparedStore | None = None,
    ):
        self.columns = RowColumns(rows, labels)
        self.project_root = Path(project_root)
        self.transform = transform
        self.labels = labels
        self.prepare = prepare
        self.store = store

    def __len__(self) -> int:
        return len(self.columns)

    def prepared(self, i: int) -> torch.Tensor:
        if self.store is not None:
            return self.store.view(self.columns.sha256(i))
        image = host_decode(self.project_root / self.columns.path(i))
        return self.prepare(image) if self.prepare is not None else image

    def label(self, i: int) -> int:
        return self.columns.label(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.prepared(i)), self.label(i)


def view_seeds(seed: int, epoch: int, n: int) -> tuple[list[int], list[int]]:
    """An epoch's shuffled order of `n` samples and one augmentation seed per position, both
    functions of (seed, epoch) only: a resumed run draws the same views as an uninterrupted one."""
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    )
    order = torch.randperm(n, generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    return order, seeds


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (index, view seed) of the epoch set by `set_epoch`, from batch `start` on (to resume
    mid-epoch). One object for all epochs, so a DataLoader can keep its workers.

    With `world` processes, each global batch is cut into `world` equal contiguous chunks and process
    `rank` gets chunk `rank`: gathered in rank order, the chunks are the single-process batch again."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split into {world} equal per-process chunks")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // batch_size if drop_last else -(-n // batch_size)  # batches in a whole epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        order, seeds = view_seeds(self.seed, epoch, self.n)
        pairs = list(zip(order, seeds, strict=True))
        self.epoch_batches = [pairs[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.per_epoch)]
        chunk = self.batch_size // self.world
        self.batches = [b[self.rank * chunk : (self.rank + 1) * chunk] for b in self.epoch_batches[start:]]

    def global_batch(self, step: int) -> list[int]:
        """The indices of the whole batch `step` of the current epoch, across processes."""
        return [index for index, _ in self.epoch_batches[step]]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)
