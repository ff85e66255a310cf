"""Margin softmax losses with sub-centres (Deng et al. 2020): ArcFace (Deng et al. 2019) or CosFace
(Wang et al. 2018), with fixed or per-class dynamic margins (GLR 2020 3rd place)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from guie.params.loss import LossParams


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


def class_margins(loss: LossParams, class_counts: Sequence[int]) -> torch.Tensor:
    """[C] float32: each class's margin, from its image count when loss.margin is "dynamic"."""
    if loss.margin == "dynamic":
        return dynamic_margins(class_counts, loss.margin_min, loss.margin_max, loss.margin_power)
    return torch.full((len(class_counts),), float(loss.margin), dtype=torch.float32)


class MarginLoss(nn.Module):
    """Logits from the max cosine over k sub-centres per class; the target class's logit gets margin m_c.

    kind "arcface": cos(theta + m_c); kind "cosface": cos(theta) - m_c.
    """

    def __init__(
        self,
        in_dim: int,
        margins: torch.Tensor,
        subcenters: int = 3,
        scale: float = 30.0,
        kind: Literal["arcface", "cosface"] = "arcface",
    ):
        super().__init__()
        if kind not in ("arcface", "cosface"):
            raise ValueError(f"MarginLoss: kind must be arcface or cosface, got {kind!r}")
        self.num_classes = int(margins.numel())
        self.subcenters = subcenters
        self.scale = scale
        self.kind = kind
        # the same draws in the same order as the first release: seeded runs keep their initial weights
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
        # The arcface path is op for op the first release's: committed outputs are byte-identical
        # (tests/model/test_loss.py compares it bit for bit with a frozen copy).
        cos = self.cosine(embeddings)
        m = self.margins[labels]
        if self.kind == "arcface":
            cos = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)  # sqrt(1 - cos^2) has an infinite gradient at |cos| = 1
            target = cos.gather(1, labels[:, None]).squeeze(1)
            sin = torch.sqrt(1.0 - target * target)
            phi = target * torch.cos(m) - sin * torch.sin(m)
            # past theta + m > pi, cos(theta + m) stops decreasing; use the linear fallback there
            phi = torch.where(target > torch.cos(math.pi - m), phi, target - torch.sin(math.pi - m) * m)
        else:  # no clamp: cos - m has no singularity, so margin 0 is exactly the plain softmax
            target = cos.gather(1, labels[:, None]).squeeze(1)
            phi = target - m
        logits = cos.scatter(1, labels[:, None], phi[:, None]) * self.scale
        return F.cross_entropy(logits, labels)


def build_margin_loss(loss: LossParams, in_dim: int, class_counts: Sequence[int]) -> MarginLoss:
    """The `loss:` section's module for classes with these image counts (class c has class_counts[c])."""
    return MarginLoss(in_dim, class_margins(loss, class_counts), loss.subcenters, loss.scale, loss.type)
