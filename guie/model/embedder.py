"""The embedding function: uint8 images -> preprocess -> tower -> head -> L2 -> PCA -> L2.

One module for every use: PCA fitting (no projection yet), the zero-shot baseline (no head),
and the exported TorchScript model (everything). That is what makes PCA fit exactly the
features the exported forward projects.
"""

from __future__ import annotations

import torch
from torch import nn

from guie.data.transforms import EvalPreprocess
from guie.model.projection import Projection


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # written out: F.normalize scripts to ops a torch 1.11 reader may not have
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True)).clamp_min(1e-12)


class Embedder(nn.Module):
    def __init__(
        self, preprocess: EvalPreprocess, tower: nn.Module, head: nn.Module | None, projection: Projection | None
    ):
        super().__init__()
        self.preprocess = preprocess
        self.tower = tower
        self.head = head
        self.projection = projection

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float images -> the L2-normalised features PCA is fitted on."""
        return self.from_tower(self.tower(x))

    def from_tower(self, f: torch.Tensor) -> torch.Tensor:
        """Tower outputs -> the features `features` returns (for features computed once and reused)."""
        if self.head is not None:
            f = self.head(f)
        return l2_normalize(f)

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float images -> final embeddings (projected when a projection is set)."""
        f = self.features(x)
        if self.projection is not None:
            f = l2_normalize(self.projection(f))
        return f

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 [B, dims], L2-normalised."""
        return self.embed_preprocessed(self.preprocess(images))
