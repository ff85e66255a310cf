"""The model a training stage trains and saves: tower, head, margin loss, class list.

A stage starts from the backbone (fresh head) or from an earlier stage's checkpoint, at its own
image size and patch stride: the position embedding is resized from the input checkpoint's grid."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalPreprocess
from guie.errors import GuieError
from guie.model.backbone import set_input_geometry, tower_mean_std
from guie.model.checkpoint import embedder_from_definition, read_checkpoint
from guie.model.definition import ModelDefinition, definition_from_params
from guie.model.embedder import Embedder
from guie.model.loss import MarginLoss, build_margin_loss

if TYPE_CHECKING:
    from guie.params.load import Params
    from guie.params.train import StageParams

# what a stage checks its input checkpoint against (its geometry may change; see the module doc)
TRAINING_FIELDS = ("name", "resize", "head_dim", "dropout")


def _cpu(state: dict) -> dict:
    # a checkpoint written on a GPU must load on a CPU-only machine
    return {k: v.cpu() for k, v in state.items()}


@dataclass
class TrainingModel:
    """Everything a stage trains, and what it saves: tower, head, margin loss, class list."""

    definition: ModelDefinition
    embedder: Embedder
    margin: MarginLoss
    classes: list[str]
    depth: int = 0  # stages from the backbone to this one, minus one: each stage's seed offset

    def to(self, device: torch.device) -> TrainingModel:
        self.embedder.to(device)
        self.margin.to(device)
        return self

    def state(self, stage: str, with_tower: bool = True) -> dict:
        state = {
            "stage": stage,
            "depth": self.depth,
            "definition": self.definition.to_dict(),
            "classes": self.classes,
            "tower": _cpu(self.embedder.tower.state_dict()) if with_tower else None,
            "head": _cpu(self.embedder.head.state_dict()),
            "margin": _cpu(self.margin.state_dict()),
        }
        return {k: v for k, v in state.items() if v is not None}

    def load_weights(self, state: dict) -> None:
        """Load the weights of a checkpoint `state` wrote (the tower's when it has one)."""
        if "tower" in state:
            self.embedder.tower.load_state_dict(state["tower"])
        self.embedder.head.load_state_dict(state["head"])
        self.margin.load_state_dict(state["margin"])


def _class_counts(train_rows: list[ManifestRow]) -> tuple[list[str], list[int]]:
    counts = Counter(r.label for r in train_rows)
    classes = sorted(counts)
    return classes, [counts[c] for c in classes]


def _carry_margin(
    margin: MarginLoss, classes: list[str], state: dict, stage: StageParams, key: str, checkpoint: Path
) -> None:
    """Carry the input stage's class weights into `margin` as `stage.margin_head` says."""
    if stage.margin_head == "reinit":
        return
    before = list(state["classes"])
    weight = state["margin"]["weight"]
    k = margin.subcenters
    if weight.shape[0] != len(before) * k or weight.shape[1] != margin.weight.shape[1]:
        raise GuieError(
            f"{key}.margin_head: {stage.margin_head} needs the input stage's sub-centre count; {checkpoint} has "
            f"{weight.shape[0] // max(1, len(before))} per class, {key}.loss.subcenters is {k}; "
            "set margin_head: reinit"
        )
    if stage.margin_head == "keep":
        if before != classes:
            raise GuieError(
                f"{key}.margin_head: keep needs the classes {checkpoint} was trained on ({len(before)}); this "
                f"stage's data has {len(classes)} ({len(set(classes) - set(before))} new); set margin_head: "
                "extend (keep the shared classes' weights) or reinit"
            )
        margin.weight.data.copy_(weight)
        return
    rows = {c: i for i, c in enumerate(before)}
    for j, c in enumerate(classes):
        if c in rows:
            margin.weight.data[j * k : (j + 1) * k] = weight[rows[c] * k : (rows[c] + 1) * k]


def _at_stage_geometry(definition: ModelDefinition, stage: StageParams) -> ModelDefinition:
    """`definition` at the stage's image size and patch stride (unset: the input's)."""
    return dataclasses.replace(
        definition,
        image_size=stage.image_size or definition.image_size,
        patch_stride=definition.patch_stride if stage.patch_stride is None else stage.patch_stride,
    )


@dataclass(frozen=True, kw_only=True)
class InputStage:
    """The earlier stage's checkpoint a stage starts from: its file, state and model definition."""

    checkpoint: Path
    state: dict
    definition: ModelDefinition

    @property
    def depth(self) -> int:
        """The depth of the stage that starts from it."""
        return int(self.state.get("depth", 0)) + 1


def read_input_stage(params: Params, checkpoint: Path) -> InputStage:
    """The input stage's checkpoint, checked against the params a training stage reads (`TRAINING_FIELDS`)."""
    state, definition = read_checkpoint(params, checkpoint, TRAINING_FIELDS)
    return InputStage(checkpoint=checkpoint, state=state, definition=definition)


def stage_model(
    params: Params, name: str, weights: Path, train_rows: list[ManifestRow], start: InputStage | None
) -> TrainingModel:
    """Stage `name`'s starting model: the backbone `weights` with a fresh head (`start` None), or the
    input stage's checkpoint at this stage's geometry; the margin loss for this stage's classes."""
    stage, key = params.train.stages[name], f"train.stages.{name}"
    classes, counts = _class_counts(train_rows)
    # the margin loss first: the seeded generator's draws are then the same for every start
    margin = build_margin_loss(stage.loss, params.model.head_dim, counts)
    if start is None:
        definition = _at_stage_geometry(definition_from_params(params.model, params.preprocess), stage)
        return TrainingModel(definition, embedder_from_definition(definition, weights), margin, classes)
    embedder = embedder_from_definition(start.definition, weights)
    embedder.tower.load_state_dict(start.state["tower"])
    embedder.head.load_state_dict(start.state["head"])
    definition = _at_stage_geometry(start.definition, stage)
    if (definition.image_size, definition.patch_stride) != (start.definition.image_size, start.definition.patch_stride):
        set_input_geometry(embedder.tower, definition.name, definition.image_size, definition.patch_stride)
        mean, std = tower_mean_std(embedder.tower)
        embedder.preprocess = EvalPreprocess(definition.image_size, definition.resize, mean, std)
    _carry_margin(margin, classes, start.state, stage, key, start.checkpoint)
    return TrainingModel(definition, embedder, margin, classes, start.depth)
