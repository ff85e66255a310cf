"""What a training step updates: the model, its optimizer and the fp16 loss scaler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from guie.runtime import Runtime
from guie.training.model import TrainingModel


@dataclass
class Optimisation:
    """What a step updates, and what a checkpoint saves besides the model."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16 loss scaling; a no-op otherwise


def make_optimizer(groups: list[dict], runtime: Runtime) -> torch.optim.Optimizer:
    """Adam over the named parameter groups."""
    # fused Adam on GPUs: one kernel per step, and it takes the fp16 scaler's inf check without a sync
    return torch.optim.Adam(groups, fused=runtime.on_gpu)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each parameter group's learning rate, keyed as logged: lr/<group name>."""
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
