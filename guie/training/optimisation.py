"""What a training step updates: the parameter groups a stage trains (layer-wise learning rates),
the optimizer, the learning-rate schedule and the fp16 loss scaler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from guie.errors import GuieError
from guie.model.backbone import tower_layers
from guie.runtime import Runtime
from guie.training.model import TrainingModel

if TYPE_CHECKING:
    from guie.params.train import StageParams


@dataclass(frozen=True)
class LrSchedule:
    """Each step's factor on the groups' learning rates: a pure function of the step, so a resumed
    run continues the schedule exactly."""

    kind: str  # constant | cosine
    warmup_steps: int
    total_steps: int

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        done = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


@dataclass
class Optimisation:
    """What a step updates, and what a checkpoint saves besides the model."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16 loss scaling; a no-op otherwise
    schedule: LrSchedule | None = None  # set by `fit` once the run's steps are known

    def set_step(self, step: int) -> None:
        """Set every group's learning rate for global step `step` of the run."""
        if self.schedule is None:
            return
        factor = self.schedule.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def tower_groups(tower: nn.Module, stage: StageParams, stage_key: str) -> list[dict]:
    """The tower's trainable parameters as named groups, marked requires_grad: resblocks from
    `unfreeze_from` (or everything with tower: all) and what follows them at lr_backbone, block i of
    n at lr_backbone * lr_decay ** (n - 1 - i), the embeddings at lr_decay ** n. Without decay, one
    group "backbone" (the paper's two learning rates)."""
    before, blocks, after = tower_layers(tower)
    n = len(blocks)
    start = 0 if stage.tower == "all" else stage.unfreeze_from
    if not 0 <= start <= n:
        raise GuieError(f"{stage_key}.unfreeze_from: {start} is outside 0..{n} for this tower")
    # (group name, depth below the top, parameters); depth 0 (the last block, what follows) is "backbone"
    layers = [("backbone.embed", n, before)] if stage.tower == "all" else []
    layers += [(f"backbone.{i}", n - 1 - i, blocks[i]) for i in range(start, n)]
    layers.append(("backbone", 0, after))
    groups: list[dict] = []
    for name, depth, params in layers:
        name = "backbone" if depth == 0 or stage.lr_decay == 1.0 else name
        if not params:
            continue
        if groups and groups[-1]["name"] == name:
            groups[-1]["params"] += params
        else:
            groups.append({"params": list(params), "lr": stage.lr_backbone * stage.lr_decay**depth, "name": name})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def stage_groups(model: TrainingModel, stage: StageParams, stage_key: str) -> list[dict]:
    """What the stage trains, as optimizer groups; everything else gets requires_grad False."""
    for p in model.embedder.tower.parameters():
        p.requires_grad_(False)
    groups = tower_groups(model.embedder.tower, stage, stage_key) if stage.tower_trains else []
    head = list(model.embedder.head.parameters()) + list(model.margin.parameters())
    for p in head:
        p.requires_grad_(stage.head_trains)
    if stage.head_trains:
        groups.append({"params": head, "lr": stage.lr_head, "name": "head"})
    for group in groups:
        group["base_lr"] = group["lr"]
    return groups


def make_optimizer(groups: list[dict], stage: StageParams, runtime: Runtime) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over the named parameter groups."""
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=stage.momentum, weight_decay=stage.weight_decay)
    # fused on GPUs: one kernel per step, and it takes the fp16 scaler's inf check without a sync
    return torch.optim.AdamW(groups, weight_decay=stage.weight_decay, fused=runtime.on_gpu)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates logged as lr/<group name>: the head's and the backbone's top group (the
    per-block groups of layer-wise decay follow from lr_decay and are not logged)."""
    return {
        f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups) if "." not in g.get("name", "")
    }
