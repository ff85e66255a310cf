"""What one training run is, built once by keyword and passed whole: what it trains on, what
trains, its seed and length, and where it reads and writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guie.data.manifest import ManifestRow


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run of a stage (a soup trains one per ingredient)."""

    stage: str  # its name in train.stages
    train_rows: list[ManifestRow]
    heldout: list[ManifestRow]  # scored each epoch (the held-out mP@5)
    seed: int  # data order and augmentations (the starting weights are drawn before the run)
    epochs: int
    tower_trains: bool
    head_trains: bool
    cached_views: int  # > 0: train the head on this many cached views of the frozen tower's output
    schedule: str  # train.stages.<name>.schedule, after warmup_steps
    warmup_steps: int
    fingerprint: str  # a resume checkpoint with another one is not resumed
    fresh: bool  # ignore the resume checkpoint
    project_root: Path  # the manifest's image paths are relative to it
    prepared_root: Path | None  # the prepared-image stores; None: decode every time
    out: Path  # the run's trained model
    metrics_dir: Path  # its DVCLive metrics
    checkpoint: Path  # the resume checkpoint: outside DVC's outs, which DVC deletes before a run
    feature_cache: Path | None  # where the cached views are kept (when cached_views > 0)
