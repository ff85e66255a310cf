"""The held-out monitor: each epoch's learning signal, mP@5 of the head features on held-out classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow
from guie.data.prepared import PreparedStore
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8
from guie.feature_cache import FeaturePass, tower_features
from guie.model.embedder import Embedder
from guie.retrieval_task import build_task, score
from guie.runtime import Runtime

if TYPE_CHECKING:
    from guie.params.load import Params


@dataclass(frozen=True, kw_only=True)
class ImageSource:
    """How the monitor reads its images: paths relative to `root`, views made by `preprocess`, read
    from the prepared-image `store` when there is one (None: decoded)."""

    root: Path
    preprocess: EvalPreprocess
    store: PreparedStore | None = None


class HeldoutMonitor:
    """mP@5 of the head features on held-out classes (no PCA): the per-epoch learning signal.

    Views are resized like training's, i.e. rounded to uint8 after the resize (read from the stage's
    prepared-image store when it has one);
    the `evaluate` stage scores the exported model exactly. While the tower is frozen its outputs
    are computed once and only the head runs each epoch."""

    def __init__(
        self, params: Params, heldout: list[ManifestRow], images: ImageSource, runtime: Runtime, frozen_tower: bool
    ):
        self.params, self.runtime, self.frozen_tower = params, runtime, frozen_tower
        self.task = build_task(heldout, [], params.evaluate.queries_per_class)
        rows, pre = self.task.queries + self.task.index, images.preprocess
        self.dataset = ManifestDataset(
            rows, images.root, Normalize(pre), prepare=ResizeToUint8(pre), store=images.store
        )
        # in loader workers: each maps the store itself, or decodes
        self.num_workers = params.train.num_workers
        self.tower_out: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, embedder: Embedder) -> float:
        if not self.task.queries:
            return float("nan")
        tower_out = self.tower_out
        if tower_out is None:
            run = FeaturePass(
                batch_size=self.params.train.batch_size, num_workers=self.num_workers, description="held-out mP@5"
            )
            tower_out = tower_features(embedder.tower, self.dataset, range(len(self.dataset)), self.runtime, run)
            if self.frozen_tower:
                self.tower_out = tower_out
        was_training = embedder.training
        embedder.eval()
        batch = self.params.train.batch_size
        emb = torch.cat(
            [
                embedder.from_tower(self.runtime.to_device(tower_out[i : i + batch])).float().cpu()
                for i in range(0, len(tower_out), batch)
            ]
        ).numpy()
        embedder.train(was_training)
        n = len(self.task.queries)
        per_query, _ = score(self.task, emb[:n], emb[n:], self.params.evaluate.k)
        return float(np.mean(list(per_query.values())))
