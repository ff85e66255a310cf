"""The open_clip image tower: project model configs, loading a tower from a checkpoint, its
mean/std, width, and which resblocks train."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import open_clip
import torch
from torch import nn

from guie.errors import GuieError
from guie.model.timm_tower import (
    is_timm_tower,
    set_timm_geometry,
    timm_after_blocks,
    timm_tower_dim,
    trunk_of,
)
from guie.torch_file import read_torch, rebuild

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make the project's configs (e.g. `guie-tiny-vit`) known to open_clip by name (importing
    guie.model.timm_tower, above, registered the timm model `guie-tiny-siglip` builds on)."""
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


def load_tower(name: str, checkpoint: Path, image_size: int | None = None, patch_stride: int = 0) -> nn.Module:
    """Build the open_clip model from `checkpoint` and keep only its image tower; with `image_size`
    (preprocess.image_size) and `patch_stride` (model.patch_stride, 0 = the patch size), run it on
    that input geometry (`set_input_geometry`)."""
    check_model_name(name)
    if not checkpoint.is_file():
        raise GuieError(f"{checkpoint}: backbone weights not found; run `dvc repro weights` (or `guie weights`) first")
    stored = read_torch(checkpoint, rebuild("weights"), mmap=True)  # mmap: reads two lists; refuses a damaged file
    model = open_clip.create_model(name, pretrained=str(checkpoint))
    visual = model.visual
    if "image_mean" in stored:  # the pretrained tag's normalisation (materialise_weights keeps it)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        visual.preprocess_cfg = {**cfg, "mean": stored["image_mean"], "std": stored["image_std"]}
    del model
    gc.collect()
    if is_timm_tower(visual):
        trunk_of(visual, name)
    if image_size is not None:
        set_input_geometry(visual, name, image_size, patch_stride)
    return visual


def _side(value: object) -> int | None:
    return int(value[0]) if isinstance(value, (tuple, list)) else (int(value) if value is not None else None)


def patch_grid(image_size: int, patch: int, stride: int) -> int:
    """Patches per side of a `patch` px conv with `stride` over `image_size` px (the remainder is dropped)."""
    return (image_size - patch) // stride + 1


# the params keys a first stage's geometry comes from (a later stage may set its own)
GEOMETRY_KEYS = ("preprocess.image_size", "model.patch_stride")


def tower_skeleton(name: str) -> nn.Module:
    """Model `name`'s image tower with no weights (on the meta device: instant, even for ViT-H),
    for checking what it can run on before anything is loaded."""
    check_model_name(name)
    with quiet_open_clip(), torch.device("meta"):
        return open_clip.create_model(name, device="meta").visual


def check_geometry(
    visual: nn.Module, name: str, image_size: int, patch_stride: int, keys: tuple[str, str] = GEOMETRY_KEYS
) -> None:
    """Refuse a geometry the tower cannot run, naming `keys` (the image size's and the stride's)."""
    size_key, stride_key = keys
    if is_timm_tower(visual):
        patch = int(trunk_of(visual, name).patch_embed.proj.kernel_size[0])
    else:
        conv = getattr(visual, "conv1", None)
        if not isinstance(conv, nn.Conv2d) or not isinstance(
            getattr(visual, "positional_embedding", None), nn.Parameter
        ):
            native = _side(getattr(visual, "image_size", None))
            if image_size != native or patch_stride:
                raise GuieError(
                    f"{size_key} / {stride_key}: model.name {name} ({type(visual).__name__}) runs at its native "
                    f"{native} px only; set {size_key}: {native} and {stride_key}: 0"
                )
            return
        patch = int(conv.kernel_size[0])
    stride = patch_stride or patch
    if stride > patch:
        raise GuieError(
            f"{stride_key}: {stride} is larger than model.name {name}'s {patch} px patches "
            "(pixels between patches would be skipped)"
        )
    if image_size < patch:
        raise GuieError(f"{size_key}: {image_size} is smaller than model.name {name}'s {patch} px patches")


def set_input_geometry(visual: nn.Module, name: str, image_size: int, patch_stride: int = 0) -> None:
    """Make an open_clip ViT take `image_size` px images with patches every `patch_stride` px
    (overlapping when smaller than the patch): the patch conv's stride and the tower's grid change,
    and the position embedding is resized to the new grid by open_clip's own `resize_pos_embed`
    (bicubic, antialiased) in one step from the native grid. The native geometry changes nothing."""
    check_geometry(visual, name, image_size, patch_stride)
    if is_timm_tower(visual):
        set_timm_geometry(visual, name, image_size, patch_stride)
        return
    conv = getattr(visual, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(visual, "positional_embedding", None), nn.Parameter):
        return  # runs at its native size (checked above)
    patch = int(conv.kernel_size[0])
    stride = patch_stride or patch
    grid = patch_grid(image_size, patch, stride)
    if (grid, grid) == tuple(visual.grid_size) and tuple(conv.stride) == (stride, stride):
        visual.image_size = (image_size, image_size)
        return
    resized = {"visual.positional_embedding": visual.positional_embedding.detach()}
    open_clip.model.resize_pos_embed(resized, SimpleNamespace(visual=SimpleNamespace(grid_size=(grid, grid))))
    visual.positional_embedding = nn.Parameter(resized["visual.positional_embedding"].contiguous())
    conv.stride = (stride, stride)
    visual.grid_size = (grid, grid)
    visual.image_size = (image_size, image_size)


def tower_mean_std(tower: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(tower, "preprocess_cfg", {}) or {}
    return tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)), tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))


def tower_dim(tower: nn.Module) -> int:
    return timm_tower_dim(tower) if is_timm_tower(tower) else int(tower.output_dim)


def _vit_after_blocks(tower: nn.Module) -> list[nn.Parameter]:
    """What follows an open_clip ViT's resblocks (final norm, projection): trained with the unfrozen blocks."""
    after = list(tower.ln_post.parameters()) if getattr(tower, "ln_post", None) is not None else []
    return after + ([tower.proj] if isinstance(getattr(tower, "proj", None), nn.Parameter) else [])


def tower_layers(tower: nn.Module) -> tuple[list[nn.Parameter], list[list[nn.Parameter]], list[nn.Parameter]]:
    """The tower's parameters by depth: what precedes the resblocks (patch and position embeddings,
    pre-norm), each resblock's, and what follows them (final norm, pooling, projection)."""
    timm = is_timm_tower(tower)
    blocks = [list(b.parameters()) for b in (tower.trunk.blocks if timm else tower.transformer.resblocks)]
    after = timm_after_blocks(tower) if timm else _vit_after_blocks(tower)
    placed = {id(p) for ps in [*blocks, after] for p in ps}
    before = [p for p in tower.parameters() if id(p) not in placed]
    return before, blocks, after
