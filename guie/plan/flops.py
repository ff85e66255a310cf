"""What one image costs a tower, counted by torch on the meta device (no weights, no memory):
forward FLOPs per resblock (torch.utils.flop_counter, 2 per multiply-add of matmuls, convolutions
and attention), parameters, and the bytes autograd saves for backward when the blocks from a given
one on train. The tower is built exactly as training builds it (open_clip's model, guie's geometry
change), only on the meta device."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from guie.model.backbone import set_input_geometry, tower_dim, tower_layers, tower_skeleton
from guie.model.timm_tower import is_timm_tower

# the patch embedding's module in open_clip's ViT and in timm's: the only FLOPs before the blocks
PATCH_EMBEDDINGS = ("conv1", "trunk.patch_embed.proj")


@dataclass(frozen=True)
class TowerCost:
    name: str
    image_size: int
    patch_stride: int
    forward_flops: int  # one image through the whole tower
    block_flops: tuple[int, ...]  # each resblock's share of forward_flops
    after_flops: int  # what follows the blocks (final norm, pooling, projection)
    before_params: int  # embeddings (patch, position, class token, pre-norm)
    block_params: tuple[int, ...]
    after_params: int
    dim: int  # the tower's output width (the head's input)
    tokens: int  # what each resblock sees per image: tokens x width
    width: int

    @property
    def params(self) -> int:
        return self.before_params + sum(self.block_params) + self.after_params

    @property
    def depth(self) -> int:
        return len(self.block_params)

    def trained_params(self, first_block: int) -> int:
        """Parameters trained with blocks `first_block`.. (0 with everything below: `tower: all`)."""
        before = self.before_params if first_block == 0 else 0
        return before + sum(self.block_params[first_block:]) + self.after_params

    def trained_forward_flops(self, first_block: int) -> int:
        """The forward FLOPs of the part that trains: backward costs twice this (gradients of the inputs
        and of the weights); the blocks below `first_block` need no backward at all."""
        below = sum(self.block_flops[:first_block]) + (self.forward_flops - sum(self.block_flops) - self.after_flops)
        return self.forward_flops - (below if first_block else 0)


def _blocks(tower: nn.Module) -> nn.ModuleList:
    return tower.trunk.blocks if is_timm_tower(tower) else tower.transformer.resblocks


def skeleton(name: str, image_size: int, patch_stride: int) -> nn.Module:
    """The tower at that geometry on the meta device, every parameter frozen."""
    tower = tower_skeleton(name)
    set_input_geometry(tower, name, image_size, patch_stride)
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower


@cache
def tower_cost(name: str, image_size: int, patch_stride: int = 0) -> TowerCost:
    tower = skeleton(name, image_size, patch_stride)
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    seen: list[torch.Size] = []
    hook = _blocks(tower)[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    with FlopCounterMode(display=False) as counter:
        tower(x)
    hook.remove()
    per_module = counter.get_flop_counts()
    root = type(tower).__name__
    names = {id(m): n for n, m in tower.named_modules()}
    block_flops = tuple(int(sum(per_module.get(f"{root}.{names[id(b)]}", {}).values())) for b in _blocks(tower))
    total = int(counter.get_total_flops())
    # what is neither the patch embedding nor a block follows them: final norm, pooling, projection
    before_flops = sum(
        int(sum(counts.values()))
        for key, counts in per_module.items()
        if key.startswith(f"{root}.") and key.removeprefix(f"{root}.") in PATCH_EMBEDDINGS
    )
    before, blocks, after = tower_layers(tower)
    return TowerCost(
        name,
        image_size,
        patch_stride,
        total,
        block_flops,
        total - before_flops - sum(block_flops),
        sum(p.numel() for p in before),
        tuple(sum(p.numel() for p in b) for b in blocks),
        sum(p.numel() for p in after),
        tower_dim(tower),
        int(seen[0][-2]),
        int(seen[0][-1]),
    )


@cache
def activation_bytes(name: str, image_size: int, patch_stride: int, first_block: int | None) -> int:
    """Bytes autograd saves for backward per image, in float32, when the blocks from `first_block` on
    train (None: nothing trains, 0: everything): what a saved-tensors hook sees on the meta device for
    two images minus for one (the weights autograd also saves cancel out), each saved tensor once. An
    upper bound on a GPU, where fused attention saves less than the attention matrix of the meta
    device's math path."""
    if first_block is None:
        return 0
    tower = skeleton(name, image_size, patch_stride)
    before, blocks, after = tower_layers(tower)
    for p in [*(before if first_block == 0 else []), *(p for b in blocks[first_block:] for p in b), *after]:
        p.requires_grad_(True)
    return _saved_bytes(tower, 2, image_size) - _saved_bytes(tower, 1, image_size)


def _saved_bytes(tower: nn.Module, batch: int, image_size: int) -> int:
    seen: dict[int, int] = {}
    kept: list[torch.Tensor] = []  # alive until counted, so that ids stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in seen:
            seen[id(t)] = t.numel() * t.element_size()
            kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(torch.empty(batch, 3, image_size, image_size, device="meta"))
    return sum(seen.values())
