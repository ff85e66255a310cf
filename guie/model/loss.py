"""Sub-center ArcFace with per-class dynamic margins (Deng et al. 2020; GLR 2020 3rd place margins)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def dynamic_margins(
    class_counts: Sequence[int], margin_min: float, margin_max: float, power: float = -0.25
) -> torch.Tensor:
    """m_c = (t_c - min t) / (max t - min t) * (max - min) + min, with t_c = n_c ** power.

    Rare classes get the big margin. With every class equally frequent the formula is 0/0; all
    classes then get the midpoint margin.
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError("dynamic_margins: every class needs at least one image")
    t = counts**power
    span = t.max() - t.min()
    if span <= 0:
        return torch.full_like(t, (margin_min + margin_max) / 2).float()
    return ((t - t.min()) / span * (margin_max - margin_min) + margin_min).float()


class SubCenterArcFace(nn.Module):
    """Logits from the max cosine over k sub-centres per class; the target class gets cos(theta + m_c)."""

    def __init__(self, in_dim: int, margins: torch.Tensor, subcenters: int = 3, scale: float = 30.0):
        super().__init__()
        self.num_classes = int(margins.numel())
        self.subcenters = subcenters
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(self.num_classes * subcenters, in_dim))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("margins", margins.float().clone())

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, C]: best sub-centre cosine per class."""
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return cos.view(-1, self.num_classes, self.subcenters).amax(dim=2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # float32 even under mixed precision: cos(theta + m) near 1 needs the mantissa bf16 lacks
        with torch.autocast(embeddings.device.type, enabled=False):
            return self._loss(embeddings.float(), labels)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        m = self.margins[labels]
        target = cos.gather(1, labels[:, None]).squeeze(1)
        sin = torch.sqrt(1.0 - target * target)
        phi = target * torch.cos(m) - sin * torch.sin(m)
        # past theta + m > pi, cos(theta + m) stops decreasing; use the linear fallback there
        phi = torch.where(target > torch.cos(math.pi - m), phi, target - torch.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], phi[:, None]) * self.scale
        return F.cross_entropy(logits, labels)
