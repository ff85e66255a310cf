"""The embedding head of the 6th-place recipe: BatchNorm -> Dropout -> Linear(tower dim -> head dim)."""

from torch import nn


def build_head(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
