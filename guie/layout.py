"""Where each stage reads and writes, relative to the project root (mirrored by dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def weights(self) -> Path:
        return self.root / "data" / "weights" / "backbone.pt"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "data" / "manifest"

    @property
    def manifest(self) -> Path:
        return self.manifest_dir / "manifest.csv"

    @property
    def head_checkpoint(self) -> Path:
        return self.root / "models" / "head.pt"

    @property
    def finetune_checkpoint(self) -> Path:
        return self.root / "models" / "finetune.pt"

    @property
    def pca(self) -> Path:
        return self.root / "models" / "pca.pt"

    @property
    def submission(self) -> Path:
        return self.root / "submission" / "submission.zip"

    @property
    def export_info(self) -> Path:
        return self.root / "submission" / "export.json"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / stage
