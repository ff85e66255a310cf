"""What one stage's training run is: its seed and length, what trains, where it checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunSpec:
    """One stage's training run: what it trains on, where it checkpoints."""

    stage: str
    seed: int  # shuffling and augmentation seed of this stage
    epochs: int
    tower_trainable: bool
    head_trainable: bool
    cached_views: int  # > 0: train the head on this many cached views of the frozen tower's output
    checkpoint: Path  # the resume checkpoint: outside DVC's outs, which DVC deletes before a run
    fingerprint: str
    fresh: bool
    feature_cache: Path | None = None  # where the cached views are kept (when cached_views > 0)
    lr_schedule: tuple[str, int] = ("constant", 0)  # train.stages.<name>.schedule and warmup_steps
