"""A trained model's checkpoint, read without building the training loss: what pca and export
load, and what training builds its model from (shared below the stages). The checkpoint carries
the model's definition (guie/model/definition.py); the model and its preprocessing are rebuilt
from it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from guie.data.transforms import EvalPreprocess
from guie.model.backbone import load_tower, tower_dim, tower_mean_std
from guie.model.definition import EVAL_FIELDS, ModelDefinition, check_definition, stored_definition
from guie.model.embedder import Embedder
from guie.model.head import build_head
from guie.torch_file import read_torch, rebuild

if TYPE_CHECKING:
    from guie.params.load import Params


def embedder_from_definition(definition: ModelDefinition, weights: Path) -> Embedder:
    """Tower (from `weights`) + the eval preprocessing + a fresh head, as `definition` says."""
    tower = load_tower(definition.name, weights, definition.image_size, definition.patch_stride)
    mean, std = tower_mean_std(tower)
    preprocess = EvalPreprocess(definition.image_size, definition.resize, mean, std)
    head = build_head(tower_dim(tower), definition.head_dim, definition.dropout)
    return Embedder(preprocess, tower, head, None)


def read_checkpoint(
    params: Params, checkpoint: Path, fields: tuple[str, ...] = EVAL_FIELDS
) -> tuple[dict, ModelDefinition]:
    """A stage checkpoint's state and the model definition stored in it, checked against the
    params in `fields` (the ones the calling stage reads)."""
    state = read_torch(checkpoint, rebuild(f"train@{checkpoint.stem}"), keys=("tower", "head"))
    stored = stored_definition(state, checkpoint)
    return state, check_definition(stored, params.model, params.preprocess, checkpoint, fields)


def load_trained(params: Params, checkpoint: Path, weights: Path) -> tuple[Embedder, ModelDefinition]:
    """The trained embedder (tower + head, eval mode) from a stage checkpoint, preprocessing and
    architecture as the checkpoint defines them, and that definition; the loss is not built (pca,
    export and evaluate read no loss params)."""
    state, definition = read_checkpoint(params, checkpoint)
    embedder = embedder_from_definition(definition, weights)
    embedder.tower.load_state_dict(state["tower"])
    embedder.head.load_state_dict(state["head"])
    return embedder.eval(), definition


def load_trained_embedder(params: Params, checkpoint: Path, weights: Path) -> Embedder:
    """`load_trained`'s embedder."""
    return load_trained(params, checkpoint, weights)[0]
