"""A trained model's checkpoint, read without building the training loss: what pca, export and
evaluate load, and what training builds its model from (shared below the stages)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from guie.data.transforms import build_eval_preprocess
from guie.errors import GuieError
from guie.model.backbone import load_tower, tower_dim, tower_mean_std
from guie.model.embedder import Embedder
from guie.model.head import build_head

if TYPE_CHECKING:
    from guie.params.load import Params


def build_embedder(params: Params, weights: Path) -> Embedder:
    """Tower (from `weights`) + the eval preprocessing + a fresh head: what a checkpoint's weights fill."""
    tower = load_tower(params.model.name, weights, params.preprocess.image_size)
    mean, std = tower_mean_std(tower)
    preprocess = build_eval_preprocess(params.preprocess, mean, std)
    head = build_head(tower_dim(tower), params.model.head_dim, params.model.dropout)
    return Embedder(preprocess, tower, head, None)


def read_checkpoint(params: Params, checkpoint: Path) -> dict:
    """A stage checkpoint's state, checked to be of the model params name."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("model_name") != params.model.name:
        raise GuieError(
            f"{checkpoint}: trained for model {state.get('model_name')!r}, params say {params.model.name!r}; re-run training"
        )
    return state


def load_trained_embedder(params: Params, checkpoint: Path, weights: Path) -> Embedder:
    """The trained embedder (tower + head, eval mode) from a stage checkpoint; the loss is not built
    (pca, export and evaluate read no loss params)."""
    state = read_checkpoint(params, checkpoint)
    embedder = build_embedder(params, weights)
    embedder.tower.load_state_dict(state["tower"])
    embedder.head.load_state_dict(state["head"])
    return embedder.eval()
