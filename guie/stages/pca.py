"""The `pca` stage: embed the PCA set through the trained model up to the (L2-normalised) head
output, fit PCA to `pca.dims`, save the projection and its explained-variance curve."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from guie.atomic import torch_save, writable_dir, write_text
from guie.data.manifest import read_manifest
from guie.embed import Batching, embed_rows
from guie.errors import GuieError, require_inputs
from guie.model.checkpoint import load_trained_embedder
from guie.model.embedder import Embedder
from guie.model.projection import fit_projection
from guie.runtime import resolve_device
from guie.threads import fixed_numerics

if TYPE_CHECKING:
    from guie.layout import Layout
    from guie.params.load import Params


def write_variance_csv(ratios: np.ndarray, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["component", "explained_variance_ratio", "cumulative"])
    for i, (r, c) in enumerate(zip(ratios, np.cumsum(ratios), strict=True), start=1):
        w.writerow([i, f"{r:.6f}", f"{c:.6f}"])
    write_text(path, buf.getvalue())


@dataclass(frozen=True, kw_only=True)
class PcaPaths:
    """Where the pca stage reads and writes."""

    project_root: Path  # the manifest's image paths are relative to it
    manifest: Path
    weights: Path  # the backbone's
    checkpoint: Path  # the final training stage's model
    out: Path  # the fitted projection
    plots_dir: Path

    @classmethod
    def in_layout(cls, layout: Layout, params: Params) -> PcaPaths:
        """The paths `guie pca` uses: the final training stage's model, models/pca.pt, metrics/pca/."""
        return cls(
            project_root=layout.root,
            manifest=layout.manifest,
            weights=layout.weights,
            checkpoint=layout.trained(params.train.final),
            out=layout.pca,
            plots_dir=layout.metrics("pca"),
        )


@fixed_numerics
def run_pca(params: Params, paths: PcaPaths) -> dict:
    require_inputs("pca", (paths.manifest, "manifest"), (paths.checkpoint, f"train@{paths.checkpoint.stem}"))
    for folder in dict.fromkeys((paths.out.parent, paths.plots_dir)):
        writable_dir(folder, "pca")  # before embedding the PCA set
    rows = [r for r in read_manifest(paths.manifest) if r.split == "pca"]
    if not rows:
        raise GuieError(
            f"{paths.manifest}: no PCA-set images (split 'pca'); add a source with role: pca to data.sources"
        )
    device = resolve_device(params.pca.device, "pca.device")  # check before loading anything
    trained = load_trained_embedder(params, paths.checkpoint, paths.weights)
    # fitted on what the artifact projects: with export.tta flip, the mean of an image's and its mirror's features
    embedder = Embedder(trained.preprocess, trained.tower, trained.head, None, flip_tta=params.export.flip_tta)
    batching = Batching(
        batch_size=params.pca.batch_size,
        num_workers=params.train.num_workers,
        device=device,
        description="embedding PCA set",
    )
    features = embed_rows(embedder, rows, paths.project_root, batching)
    projection, ratios = fit_projection(features, params.pca.dims, params.pca.whiten, params.seed)
    torch_save(dict(projection.state_dict(), explained_variance_ratio=torch.from_numpy(ratios)), paths.out)
    write_variance_csv(ratios, paths.plots_dir / "explained_variance.csv")
    from guie.plots import plot_explained_variance

    plot_explained_variance(ratios, paths.plots_dir / "explained_variance.png")
    return {"images": len(rows), "dims": params.pca.dims, "explained_variance": float(ratios.sum())}
