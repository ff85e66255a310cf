"""PCA as a module, fitted on the features the exported model projects; what the `pca` stage
fits and saves, and export and evaluate load or fit again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from guie.errors import GuieError
from guie.torch_file import read_torch, rebuild


class Projection(nn.Module):
    """PCA as a module: (x - mean) @ components.T, optionally whitened."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("components", components.float().clone())
        self.register_buffer("scale", scale.float().clone())  # 1/sqrt(variance) when whitened, else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x - self.mean, self.components.t()) * self.scale


def fit_projection(
    features: np.ndarray, dims: int, whiten: bool, seed: int, what: str = "PCA set"
) -> tuple[Projection, np.ndarray]:
    """Fit PCA on `features` [N, D]; returns the projection module and explained-variance ratios."""
    n, d = features.shape
    # centred, n images span at most n - 1 directions: a component beyond has no variance (whitening it divides by ~0)
    if dims > min(n - 1, d):
        raise GuieError(
            f"pca.dims: {dims} components need at least {dims + 1} images and {dims} feature dims; "
            f"the {what} has {n} images of {d} dims"
        )
    pca = PCA(n_components=dims, whiten=whiten, svd_solver="full", random_state=seed).fit(features.astype(np.float64))
    scale = 1.0 / np.sqrt(pca.explained_variance_) if whiten else np.ones(dims)
    projection = Projection(torch.from_numpy(pca.mean_), torch.from_numpy(pca.components_), torch.from_numpy(scale))
    return projection, pca.explained_variance_ratio_


def load_projection(path: Path) -> Projection:
    if not path.is_file():
        raise GuieError(f"{path}: PCA not found; run `dvc repro pca` (or `guie pca`) first")
    state = read_torch(path, rebuild("pca"), keys=("mean", "components", "scale"))
    return Projection(state["mean"], state["components"], state["scale"])
