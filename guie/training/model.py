"""The model a training stage trains and saves: tower, head, sub-center ArcFace, class list."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from guie.data.manifest import ManifestRow
from guie.model.checkpoint import embedder_from_definition, read_checkpoint
from guie.model.definition import PARAM_KEYS, ModelDefinition, definition_from_params
from guie.model.embedder import Embedder
from guie.model.loss import SubCenterArcFace, dynamic_margins

if TYPE_CHECKING:
    from guie.params.load import Params


def _cpu(state: dict) -> dict:
    # a checkpoint written on a GPU must load on a CPU-only machine
    return {k: v.cpu() for k, v in state.items()}


@dataclass
class TrainingModel:
    """Everything a stage trains, and what it saves: tower, head, margin loss, class list."""

    definition: ModelDefinition
    embedder: Embedder
    arcface: SubCenterArcFace
    classes: list[str]

    def to(self, device: torch.device) -> TrainingModel:
        self.embedder.to(device)
        self.arcface.to(device)
        return self

    def state(self, stage: str, with_tower: bool = True) -> dict:
        state = {
            "stage": stage,
            "definition": self.definition.to_dict(),
            "classes": self.classes,
            "tower": _cpu(self.embedder.tower.state_dict()) if with_tower else None,
            "head": _cpu(self.embedder.head.state_dict()),
            "arcface": _cpu(self.arcface.state_dict()),
        }
        return {k: v for k, v in state.items() if v is not None}


def build_training_model(params: Params, weights: Path, classes: list[str], margins: torch.Tensor) -> TrainingModel:
    """The model params define, on the backbone `weights`, for `classes` with these ArcFace margins."""
    arcface = SubCenterArcFace(params.model.head_dim, margins, params.loss.subcenters, params.loss.scale)
    definition = definition_from_params(params.model, params.preprocess)
    return TrainingModel(definition, embedder_from_definition(definition, weights), arcface, classes)


def new_training_model(params: Params, weights: Path, train_rows: list[ManifestRow]) -> TrainingModel:
    """Stage 1's starting point: backbone weights, fresh head, margins from the class counts."""
    counts = Counter(r.label for r in train_rows)
    classes = sorted(counts)
    margins = dynamic_margins(
        [counts[c] for c in classes], params.loss.margin_min, params.loss.margin_max, params.loss.margin_power
    )
    return build_training_model(params, weights, classes, margins)


def load_training_model(params: Params, checkpoint: Path, weights: Path) -> TrainingModel:
    """Rebuild the model of a stage checkpoint, which must be the model params define."""
    state, _ = read_checkpoint(params, checkpoint, tuple(PARAM_KEYS))
    model = build_training_model(params, weights, list(state["classes"]), state["arcface"]["margins"])
    model.embedder.tower.load_state_dict(state["tower"])
    model.embedder.head.load_state_dict(state["head"])
    model.arcface.load_state_dict(state["arcface"])
    return model
