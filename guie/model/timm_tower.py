"""open_clip's timm-backed image towers (`TimmModel`: SigLIP's ViTs): their width, input geometry and
trainable blocks, and `guie_tiny_siglip`, a tiny attention-pool ViT registered with timm so that the
fast suite runs the same code as ViT-SO400M-14-SigLIP.

Only timm's plain `VisionTransformer` is supported (what the legacy-safe export can rewrite); other
timm trunks (EVA02's rotary `Eva`, ConvNeXt, ...) are refused when the tower is built, naming the part.
"""

from __future__ import annotations

from open_clip.timm_model import TimmModel
from timm.layers import resample_abs_pos_embed
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from guie.errors import GuieError


@register_model
def guie_tiny_siglip(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """SigLIP's tower shape in miniature: no class token, attention-pool (MAP) head, 16 px patches."""
    if pretrained:
        raise GuieError("model.pretrained: guie_tiny_siglip has no pretrained weights; set model.pretrained: ''")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's loader options: nothing to load
        kwargs.pop(key, None)
    args = {"patch_size": 16, "embed_dim": 64, "depth": 3, "num_heads": 2, "class_token": False, "global_pool": "map"}
    return VisionTransformer(**(args | kwargs))


def is_timm_tower(tower: nn.Module) -> bool:
    return isinstance(tower, TimmModel)


def trunk_of(tower: TimmModel, name: str) -> VisionTransformer:
    """The timm trunk, refused with the part guie cannot train or export when it is not a plain ViT."""
    trunk = tower.trunk
    if not isinstance(trunk, VisionTransformer):
        raise GuieError(
            f"model.name {name}: its timm tower is {type(trunk).__name__}; guie trains and exports open_clip's "
            "ViTs and timm's VisionTransformer (SigLIP) only"
        )
    return trunk


def timm_tower_dim(tower: TimmModel) -> int:
    linears = [m for m in tower.head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    trunk = tower.trunk
    return int(trunk.attn_pool.out_features if trunk.attn_pool is not None else trunk.num_features)


def set_timm_geometry(tower: TimmModel, name: str, image_size: int, patch_stride: int) -> None:
    """`set_input_geometry` for a timm ViT: the patch conv's stride, the grid, and the position
    embedding resampled by timm's own `resample_abs_pos_embed` (bicubic, antialiased) from the native grid.
    The geometry was checked against the patch size by `set_input_geometry` (`check_geometry`)."""
    from guie.model.backbone import patch_grid  # one grid rule for both tower kinds

    trunk = trunk_of(tower, name)
    embed = trunk.patch_embed
    patch = int(embed.proj.kernel_size[0])
    stride = patch_stride or patch
    if trunk.dynamic_img_size:
        raise GuieError(f"model.name {name}: timm towers with dynamic_img_size are not supported")
    grid = patch_grid(image_size, patch, stride)
    old = tuple(embed.grid_size)
    if (grid, grid) != old:
        prefix = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        resized = resample_abs_pos_embed(trunk.pos_embed.detach(), (grid, grid), old, num_prefix_tokens=prefix)
        trunk.pos_embed = nn.Parameter(resized.contiguous())
    embed.proj.stride = (stride, stride)
    embed.img_size = (image_size, image_size)
    embed.grid_size = (grid, grid)
    embed.num_patches = grid * grid
    tower.image_size = (image_size, image_size)


def timm_after_blocks(tower: TimmModel) -> list[nn.Parameter]:
    """What follows the blocks (final norm, attention pool, heads): trained with the unfrozen blocks."""
    trunk = tower.trunk
    parts = [trunk.norm, trunk.fc_norm, trunk.attn_pool, trunk.head, tower.head]
    return [p for part in parts if part is not None for p in part.parameters()]
