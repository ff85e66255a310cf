"""The embedding function: uint8 images -> preprocess -> tower -> head -> L2 -> PCA -> L2.

One module for every use: PCA fitting (no projection yet), the zero-shot baseline (no head),
and the exported TorchScript model (everything). That is what makes PCA fit exactly the
features the exported forward projects.

Flip TTA (`export.tta: flip`, `flip_tta=True`): the features are the renormalised sum of the
L2-normalised head features of the image and of its horizontal mirror, so PCA, evaluation and the
artifact all see the same TTA features.
"""

from __future__ import annotations

import torch
from torch import nn

from guie.data.transforms import EvalPreprocess
from guie.model.projection import Projection


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    # written out: F.normalize scripts to ops a torch 1.11 reader may not have
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True)).clamp_min(1e-12)


class WithMirror(nn.Module):
    """[B,C,H,W] -> [2B,C,H,W]: the batch, then its horizontal mirror (flip TTA's one tower call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.flip(x, [-1])], dim=0)


class Embedder(nn.Module):
    # `flip_tta` is read from Python only; scripted, `hasattr(self, "with_mirror")` decides (see __init__)
    __jit_unused_properties__ = ["flip_tta"]

    def __init__(
        self,
        preprocess: EvalPreprocess,
        tower: nn.Module,
        head: nn.Module | None,
        projection: Projection | None,
        flip_tta: bool = False,
    ):
        super().__init__()
        self.preprocess = preprocess
        self.tower = tower
        self.head = head
        self.projection = projection
        if flip_tta:
            # Only present when on, and `features` tests it with hasattr, which TorchScript settles at
            # compile time: off, the module has no extra attribute and the flip branch is compiled out,
            # so the scripted code (and the archive's bytes) are exactly the plain embedder's.
            self.with_mirror = WithMirror()

    @property
    def flip_tta(self) -> bool:
        return hasattr(self, "with_mirror")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed float images -> the L2-normalised features PCA is fitted on (flip-averaged
        under flip TTA)."""
        if hasattr(self, "with_mirror"):
            # image and mirror as one 2B batch: one tower call (better GPU use than two of B); per image
            # the numbers match two separate calls within 1e-6 (tests/model/test_tta.py)
            f = self.from_tower(self.tower(self.with_mirror(x)))
            b = x.shape[0]
            return l2_normalize(f[:b] + f[b:])
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
