"""Where each stage reads and writes, relative to the project root (mirrored by dvc.yaml).

The one home of every project-relative path: no other module under guie/ spells one
(tests/test_layout.py checks both). Library functions take the paths they need as arguments, so
this module is not among any stage's code deps. Besides the DVC-tracked paths it names those DVC
must not track: resume checkpoints and feature caches (DVC deletes a stage's outputs before
running it), the download cache, the pretrained-weights hub cache and `guie submit`'s work folder.
Files a stage writes inside its own metrics folder (plots, dvclive's files) are named by the stage.
"""

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
    def downloads_dir(self) -> Path:
        """The download cache: fetched files, kept between runs and git-ignored, never a DVC output."""
        return self.root / "data" / "downloads"

    def downloads(self, source_name: str) -> Path:
        return self.downloads_dir / source_name

    @property
    def weights(self) -> Path:
        """The backbone checkpoint: a first training stage starts `from: backbone`, this file."""
        return self.trained("backbone")

    @property
    def weights_hub(self) -> Path:
        """Where pretrained weights are downloaded to before `weights` writes its checkpoint."""
        return self.root / "data" / "weights" / "hub"

    @property
    def prepared(self) -> Path:
        """The prepared-image stores (decoded, resized training views): a cache, git-ignored, never a DVC output."""
        return self.root / "data" / "prepared"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "data" / "manifest"

    @property
    def manifest(self) -> Path:
        return self.manifest_dir / "manifest.csv"

    @property
    def rejected(self) -> Path:
        return self.manifest_dir / "rejected.csv"

    def trained(self, stage: str) -> Path:
        """Training stage `stage`'s model (`backbone`: the weights stage's tower)."""
        return self.root / "models" / f"{stage}.pt"

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

    @property
    def verify_report(self) -> Path:
        return self.root / "metrics" / "verify.json"

    @property
    def evaluate_report(self) -> Path:
        return self.metrics("evaluate") / "evaluate.json"

    def checkpoint(self, stage: str) -> Path:
        """A training stage's resume checkpoint: outside its DVC outputs, which DVC deletes before a run."""
        return self.root / "checkpoints" / stage / "last.pt"

    def feature_cache(self, stage: str) -> Path:
        """A training stage's cached tower features, kept beside its resume checkpoint."""
        return self.checkpoint(stage).with_name("features.pt")

    def twin(self, preset: str) -> Path:
        """`guie twin`'s scratch project for a preset (git-ignored; its own DVC repository)."""
        return self.root / "twins" / preset

    @property
    def dvc_dir(self) -> Path:
        """DVC's own folder: a project with one is a DVC repository."""
        return self.root / ".dvc"

    @property
    def plots_page(self) -> Path:
        """The page template `dvc plots show` fills (.dvc/config's plots.html_template): vega inline, offline."""
        return self.dvc_dir / "plots-page.html"

    @property
    def submit_work(self) -> Path:
        """`guie submit`'s dataset and notebook folders and its record of finished steps."""
        return self.root / ".guie" / "submit"
