"""What the artifact wraps around the embedder: inputs moved to the weights' device, and the
tower optionally run in float16 (`export.half`)."""

from __future__ import annotations

import torch
from torch import nn

from guie.model.embedder import Embedder


class HalfPrecision(nn.Module):
    """A module run in float16 between float32 neighbours (the tower under `export.half`)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(torch.float16)).float()


class OnWeightsDevice(nn.Module):
    """The exported forward: the host never moves its images, so move them to the weights' device."""

    def __init__(self, embedder: Embedder):
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images.to(self.embedder.preprocess.mean.device))
