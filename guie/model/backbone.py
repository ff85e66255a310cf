"""The open_clip image tower: project model configs, loading a tower from a checkpoint, its
mean/std, width, and which resblocks train."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
from torch import nn

from guie.errors import GuieError

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make the project's configs (e.g. `guie-tiny-vit`) known to open_clip by name."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def check_model_name(name: str) -> None:
    register_model_configs()
    if name not in open_clip.list_models():
        raise GuieError(f"model.name: unknown open_clip model {name!r} (e.g. 'ViT-H-14' or 'guie-tiny-vit')")


@contextmanager
def quiet_open_clip() -> Iterator[None]:
    """open_clip warns and logs (at ERROR, through the root logger) before it raises; the error
    guie raises instead says it all, in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def load_tower(name: str, checkpoint: Path, image_size: int | None = None) -> nn.Module:
    """Build the open_clip model from `checkpoint` and keep only its image tower; with `image_size`
    (preprocess.image_size), check the tower takes images of that size (its position embeddings do)."""
    check_model_name(name)
    if not checkpoint.is_file():
        raise GuieError(f"{checkpoint}: backbone weights not found; run `dvc repro weights` (or `guie weights`) first")
    model = open_clip.create_model(name, pretrained=str(checkpoint))
    visual = model.visual
    del model
    gc.collect()
    expected = getattr(visual, "image_size", None)
    side = expected[0] if isinstance(expected, (tuple, list)) else expected
    if image_size is not None and side is not None and image_size != side:
        raise GuieError(
            f"preprocess.image_size: {image_size} does not fit model.name {name}, which takes {side} px images; set preprocess.image_size: {side}"
        )
    return visual


def tower_mean_std(tower: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(tower, "preprocess_cfg", {}) or {}
    return tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


def tower_dim(tower: nn.Module) -> int:
    return int(tower.output_dim)


def unfreeze_from(tower: nn.Module, index: int) -> list[nn.Parameter]:
    """Freeze the tower, then unfreeze resblocks[index:] and everything after them.

    Returns the trainable parameters (the backbone's learning-rate group)."""
    blocks = tower.transformer.resblocks
    if not 0 <= index <= len(blocks):
        raise GuieError(f"train.finetune.unfreeze_from: {index} is outside 0..{len(blocks)} for this tower")
    for p in tower.parameters():
        p.requires_grad_(False)
    trainable = [p for block in blocks[index:] for p in block.parameters()]
    for module in (getattr(tower, "ln_post", None),):
        if module is not None:
            trainable += list(module.parameters())
    if isinstance(getattr(tower, "proj", None), nn.Parameter):
        trainable.append(tower.proj)
    for p in trainable:
        p.requires_grad_(True)
    return trainable
