"""Torch datasets over manifest rows; images decoded exactly as the host decodes them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from guie.data.manifest import ManifestRow
from guie.data.transforms import decode_image

Transform = Callable[[torch.Tensor], torch.Tensor]


class ManifestDataset(Dataset):
    """(image, label index) pairs: decode -> `prepare` (deterministic, cacheable) -> `transform`.

    With `cache`, prepared images are kept in memory after their first use, so later epochs
    skip decoding and resizing (worth it when the prepared set fits in RAM, as on the tiny default).
    `labels` maps class name -> index; without it the label is -1.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        project_root: Path,
        transform: Transform,
        labels: dict[str, int] | None = None,
        prepare: Transform | None = None,
        cache: bool = False,
    ):
        self.rows = list(rows)
        self.project_root = Path(project_root)
        self.transform = transform
        self.labels = labels
        self.prepare = prepare
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def prepared(self, i: int) -> torch.Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        image = decode_image(self.project_root / self.rows[i].path)
        if self.prepare is not None:
            image = self.prepare(image)
        if self.cache is not None:
            self.cache[i] = image
        return image

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = self.labels[self.rows[i].label] if self.labels is not None else -1
        return self.transform(self.prepared(i)), label
