"""What a training step updates: the parameter groups a stage trains (layer-wise learning rates),
the optimizer, the learning-rate schedule and the fp16 loss scaler."""

from __future__ import annotations

import math
from collections.abc import Callable
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

NO_DECAY = ".no_decay"  # the suffix of a group of parameters that do not decay (`decays`)


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


# learned token vectors, not weight matrices: position embeddings, class/register tokens, an
# attention pool's query (timm's and open_clip's no_weight_decay() lists, plus the pool queries),
# and CLIP's logit scale and bias
_NOT_DECAYED = frozenset(
    {
        "positional_embedding",
        "class_embedding",
        "pos_embed",
        "cls_token",
        "reg_token",
        "dist_token",
        "latent",
        "query",
        "logit_scale",
        "logit_bias",
    }
)


def decays(name: str, param: nn.Parameter) -> bool:
    """open_clip's weight-decay rule: weight matrices and conv kernels (2+ dims) decay; biases,
    norms (1-D), embeddings and logit scales do not. The margin head's class weights (one row per
    class and sub-centre) are a weight matrix: decayed, as insightface decays its FC weights."""
    return param.ndim >= 2 and name.rsplit(".", 1)[-1] not in _NOT_DECAYED


def _tower_layers_named(tower: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """The tower's parameters by layer in timm's numbering: 0 the embeddings (what precedes the
    blocks), i + 1 block i, n + 1 what follows the blocks (final norm, pooling, projection)."""
    before, blocks, after = tower_layers(tower)
    names = {id(p): n for n, p in tower.named_parameters()}
    return [[(names[id(p)], p) for p in layer] for layer in [before, *blocks, after]]


def tower_rule(tower: nn.Module, lr_decay: float) -> Callable[[str, nn.Parameter], tuple[float, bool]]:
    """timm's `param_groups_layer_decay` (BEiT's rule) as one function: a tower parameter's name ->
    (its learning-rate scale, whether it decays). Layer l of n + 2 (`_tower_layers_named`) scales by
    lr_decay ** (n + 1 - l): what follows the blocks 1, the last block lr_decay, block i
    lr_decay ** (n - i), the embeddings lr_decay ** (n + 1)."""
    layers = _tower_layers_named(tower)
    top = len(layers) - 1
    layer_of = {name: i for i, layer in enumerate(layers) for name, _ in layer}
    return lambda name, param: (lr_decay ** (top - layer_of[name]), decays(name, param))


def _group_name(layer: int, n: int, lr_decay: float) -> str:
    if lr_decay == 1.0 or layer == n + 1:
        return "backbone"
    return "backbone.embed" if layer == 0 else f"backbone.{layer - 1}"


def _group(base: str, decay: bool, weight_decay: float) -> tuple[str, float]:
    """(group name, weight decay) of a parameter of group `base`: one that does not decay goes to
    `<base>.no_decay` when the stage decays."""
    if decay or not weight_decay:
        return base, weight_decay
    return base + NO_DECAY, 0.0


def tower_groups(tower: nn.Module, stage: StageParams, stage_key: str) -> list[dict]:
    """The tower's trainable parameters as named groups (`tower_rule`), marked requires_grad: resblocks
    from `unfreeze_from` (or everything, embeddings included, with tower: all) and what follows them,
    at lr_backbone times their layer's scale. Without decay, one group "backbone" (the paper's two
    learning rates)."""
    layers = _tower_layers_named(tower)
    n = len(layers) - 2
    start = 0 if stage.tower == "all" else stage.unfreeze_from
    if not 0 <= start <= n:
        raise GuieError(f"{stage_key}.unfreeze_from: {start} is outside 0..{n} for this tower")
    rule = tower_rule(tower, stage.lr_decay)
    first = 0 if stage.tower == "all" else start + 1  # block i is layer i + 1
    groups: dict[str, dict] = {}
    for layer in range(first, n + 2):
        for name, param in layers[layer]:
            scale, decay = rule(name, param)
            group, weight_decay = _group(_group_name(layer, n, stage.lr_decay), decay, stage.weight_decay)
            entry = groups.setdefault(
                group, {"params": [], "lr": stage.lr_backbone * scale, "weight_decay": weight_decay}
            )
            entry["params"].append(param)
            param.requires_grad_(True)
    return [dict(g, name=k) for k, g in groups.items()]


def stage_groups(model: TrainingModel, stage: StageParams, stage_key: str) -> list[dict]:
    """What the stage trains, as optimizer groups; everything else gets requires_grad False."""
    for p in model.embedder.tower.parameters():
        p.requires_grad_(False)
    groups = tower_groups(model.embedder.tower, stage, stage_key) if stage.tower_trains else []
    head = [*model.embedder.head.named_parameters(), *model.margin.named_parameters(prefix="margin")]
    for _, p in head:
        p.requires_grad_(stage.head_trains)
    if stage.head_trains:
        head_groups: dict[str, dict] = {}
        for name, param in head:
            group, weight_decay = _group("head", decays(name, param), stage.weight_decay)
            head_groups.setdefault(group, {"params": [], "lr": stage.lr_head, "weight_decay": weight_decay})
            head_groups[group]["params"].append(param)
        groups += [dict(g, name=k) for k, g in head_groups.items()]
    for group in groups:
        group["base_lr"] = group["lr"]
    return groups


def make_optimizer(groups: list[dict], stage: StageParams, runtime: Runtime) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum over the named parameter groups."""
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=stage.momentum)
    # fused on GPUs: one kernel per step, and it takes the fp16 scaler's inf check without a sync
    return torch.optim.AdamW(groups, fused=runtime.on_gpu)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates logged as lr/<group name>: the head's and the backbone's top group (the
    per-block groups of layer-wise decay follow from lr_decay, and a `.no_decay` group has its
    layer's rate: neither is logged)."""
    rates = {}
    for i, group in enumerate(optimizer.param_groups):
        name = group.get("name", str(i)).removesuffix(NO_DECAY)
        if "." not in name:
            rates.setdefault(f"lr/{name}", group["lr"])
    return rates
