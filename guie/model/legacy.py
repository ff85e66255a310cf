"""The legacy-safe (torch 1.11 scriptable) twin of an image tower, whichever kind it is, and the
check that refuses, before any weights are fetched, a tower that has none."""

from __future__ import annotations

import open_clip
import torch
from open_clip.model import _build_vision_tower
from open_clip.timm_model import TimmModel
from torch import nn

from guie.errors import GuieError
from guie.model.backbone import quiet_open_clip, register_model_configs
from guie.model.legacy_timm import LegacyTimmTower
from guie.model.legacy_vit import LegacyVisionTower


def legacy_tower(tower: nn.Module) -> nn.Module:
    """open_clip's own ViT -> LegacyVisionTower; a timm-backed tower (SigLIP) -> LegacyTimmTower."""
    return LegacyTimmTower(tower) if isinstance(tower, TimmModel) else LegacyVisionTower(tower)


def check_exportable(name: str) -> None:
    """Refuse model.name when the export cannot rewrite its tower (EVA02, ResNets, attentional pools, ...),
    naming the part. The tower is built on the meta device (no memory, no init: ~0.2 s for SO400M)
    through open_clip's own vision-tower builder, and its rewrite is constructed, which checks every part."""
    register_model_configs()
    config = open_clip.get_model_config(name)
    with torch.device("meta"), quiet_open_clip():
        tower = _build_vision_tower(config["embed_dim"], config["vision_cfg"], config.get("quick_gelu", False))
    try:
        legacy_tower(tower)
    except GuieError as err:
        raise GuieError(f"model.name {name}: the scorer's torch 1.11 could not run this tower: {err}") from None
