"""A timm-backed open_clip tower (timm's `VisionTransformer`, as in SigLIP) rewritten with ops that a
torch 1.11 TorchScript reader knows: the same rules as `legacy_vit` (erf/tanh GELU spelled out,
matmul + softmax attention instead of fused SDPA, a strided `conv2d` patch embedding), plus timm's
parts: no class token, patch-embedding bias, and the attention-pool (MAP) head.

It shares the timm parameters (no copy). Inference only: dropouts and drop-path are identities in eval.
Anything the rewrite cannot express is refused naming the part, before export starts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.timm_model import TimmModel
from timm.layers import AttentionPoolLatent, LayerScale, Mlp
from timm.layers.activations import GELU, GELUTanh
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from guie.errors import GuieError
from guie.model.legacy_vit import _ErfGELU, _LayerNorm, _LayerScale, _TanhGELU

_WHERE = "LegacyTimmTower (timm VisionTransformer)"


def _activation(act: nn.Module, field: str) -> nn.Module:
    if isinstance(act, GELU) or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return _ErfGELU()
    if isinstance(act, GELUTanh) or (isinstance(act, nn.GELU) and act.approximate == "tanh"):
        return _TanhGELU()
    raise GuieError(f"{_WHERE}: {field} is {act!r}; only GELU (exact or tanh) is supported")


def _norm(norm: nn.Module, field: str) -> nn.Module:
    return nn.Identity() if isinstance(norm, nn.Identity) else _LayerNorm(norm, field)


def _require_identity(module: nn.Module | None, field: str, option: str) -> None:
    if module is not None and not isinstance(module, nn.Identity):
        raise GuieError(f"{_WHERE}: {field} is {type(module).__name__} ({option}); towers without it are supported")


class _Linear(nn.Module):
    """A shared nn.Linear's weight and bias, as one functional call."""

    def __init__(self, linear: nn.Module, field: str):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise GuieError(f"{_WHERE}: {field} is {type(linear).__name__}, not nn.Linear")
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Mlp(nn.Module):
    def __init__(self, mlp: nn.Module, field: str):
        super().__init__()
        if type(mlp) is not Mlp:
            raise GuieError(f"{_WHERE}: {field} is {type(mlp).__name__} (e.g. SwiGLU); only timm's Mlp is supported")
        _require_identity(mlp.norm, f"{field}.norm", "scale_mlp_norm")
        self.fc1 = _Linear(mlp.fc1, f"{field}.fc1")
        self.act = _activation(mlp.act, f"{field}.act")
        self.fc2 = _Linear(mlp.fc2, f"{field}.fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _layer_scale(scale: nn.Module, field: str) -> nn.Module:
    if isinstance(scale, LayerScale):
        return _LayerScale(scale)
    _require_identity(scale, field, "a layer scale other than timm's LayerScale")
    return nn.Identity()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over [B, heads, L, head_dim]; written out: SDPA is unknown to torch 1.11."""
    return torch.matmul(torch.softmax(torch.matmul(q * scale, k.transpose(-2, -1)), dim=-1), v)


class _TimmBlock(nn.Module):
    """timm's pre-norm `Block`: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, block: nn.Module, index: int):
        super().__init__()
        field = f"trunk.blocks[{index}]"
        if type(block) is not Block:
            raise GuieError(f"{_WHERE}: {field} is {type(block).__name__}; only timm's pre-norm Block is supported")
        attn = block.attn
        if type(attn) is not Attention:
            raise GuieError(f"{_WHERE}: {field}.attn is {type(attn).__name__}; only timm's Attention is supported")
        _require_identity(attn.q_norm, f"{field}.attn.q_norm", "qk_norm")
        _require_identity(attn.norm, f"{field}.attn.norm", "scale_attn_norm")
        if getattr(attn, "gate", None) is not None:
            raise GuieError(f"{_WHERE}: {field}.attn is gated; towers without attention gates are supported")
        self.norm1 = _norm(block.norm1, f"{field}.norm1")
        self.qkv = _Linear(attn.qkv, f"{field}.attn.qkv")
        self.proj = _Linear(attn.proj, f"{field}.attn.proj")
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.scale = 1.0 / math.sqrt(attn.head_dim)
        self.ls1 = _layer_scale(block.ls1, f"{field}.ls1")
        self.norm2 = _norm(block.norm2, f"{field}.norm2")
        self.mlp = _Mlp(block.mlp, f"{field}.mlp")
        self.ls2 = _layer_scale(block.ls2, f"{field}.ls2")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens = x.size(0), x.size(1)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = _attention(qkv[0], qkv[1], qkv[2], self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attention(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _AttentionPool(nn.Module):
    """timm's `AttentionPoolLatent` (SigLIP's MAP head): a learned latent query attends over the tokens."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        field = "trunk.attn_pool"
        if type(pool) is not AttentionPoolLatent:
            raise GuieError(f"{_WHERE}: {field} is {type(pool).__name__}; only timm's AttentionPoolLatent is supported")
        if pool.pos_embed is not None or pool.pool not in ("token", "avg") or pool.mlp is None:
            raise GuieError(
                f"{_WHERE}: {field} needs no position embedding, pool 'token' or 'avg' and an output projection"
            )
        _require_identity(pool.q_norm, f"{field}.q_norm", "qk_norm")
        self.latent = pool.latent
        self.q = _Linear(pool.q, f"{field}.q")
        self.kv = _Linear(pool.kv, f"{field}.kv")
        self.num_heads = int(pool.num_heads)
        self.head_dim = int(pool.head_dim)
        self.scale = 1.0 / math.sqrt(pool.head_dim)
        self.proj = _Linear(pool.proj, f"{field}.proj")
        self.norm = _norm(pool.norm, f"{field}.norm")
        self.mlp = _Mlp(pool.mlp, f"{field}.mlp")
        self.average = pool.pool == "avg"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens = x.size(0), x.size(1)
        latent_len = self.latent.size(1)
        q = self.q(self.latent.to(x.dtype).expand(batch, -1, -1))
        q = q.reshape(batch, latent_len, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = _attention(q, kv[0], kv[1], self.scale).transpose(1, 2)
        out = self.proj(out.reshape(batch, latent_len, self.num_heads * self.head_dim))
        out = out + self.mlp(self.norm(out))
        return out.mean(dim=1) if self.average else out[:, 0]


def _check_trunk(trunk: nn.Module) -> VisionTransformer:
    if not isinstance(trunk, VisionTransformer):
        kind = type(trunk).__name__
        why = " (EVA: rotary position embeddings, SwiGLU MLPs)" if kind == "Eva" else ""
        raise GuieError(f"{_WHERE}: the timm trunk is {kind}{why}; only VisionTransformer (e.g. SigLIP) is supported")
    if trunk.reg_token is not None or trunk.dynamic_img_size or trunk.pos_embed is None:
        raise GuieError(
            f"{_WHERE}: register tokens, dynamic_img_size and towers without an absolute position embedding "
            "are not supported"
        )
    if getattr(trunk, "pool_include_prefix", False):
        raise GuieError(f"{_WHERE}: pool_include_prefix is not supported")
    _require_identity(trunk.patch_embed.norm, "trunk.patch_embed.norm", "a patch-embedding norm")
    if trunk.attn_pool is None and trunk.global_pool not in ("token", "avg"):
        raise GuieError(f"{_WHERE}: global_pool {trunk.global_pool!r} is not supported; use 'token', 'avg' or 'map'")
    _require_identity(trunk.head, "trunk.head", "a classifier")
    return trunk


class LegacyTimmTower(nn.Module):
    """`tower(x)` of open_clip's TimmModel around a timm ViT, for x float [B, 3, S, S], scriptable for torch 1.11."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        if not isinstance(tower, TimmModel):
            raise GuieError(f"{_WHERE}: the image tower is {type(tower).__name__}, not open_clip's TimmModel")
        trunk = _check_trunk(tower.trunk)
        conv = trunk.patch_embed.proj
        self.patch_weight = conv.weight
        self.patch_bias = conv.bias
        self.patch_stride: list[int] = [int(s) for s in conv.stride]
        self.class_token = trunk.cls_token is not None
        self.cls_token = trunk.cls_token if trunk.cls_token is not None else torch.zeros(0)
        self.pos_embed = trunk.pos_embed
        self.pos_after_cls = not trunk.no_embed_class  # timm's original layout: the class token has a position
        self.norm_pre = _norm(trunk.norm_pre, "trunk.norm_pre")
        self.blocks = nn.ModuleList(_TimmBlock(b, i) for i, b in enumerate(trunk.blocks))
        self.norm = _norm(trunk.norm, "trunk.norm")
        self.attn_pool = _AttentionPool(trunk.attn_pool) if trunk.attn_pool is not None else nn.Identity()
        self.map_pool = trunk.attn_pool is not None
        self.avg_pool = trunk.global_pool == "avg"
        self.prefix = int(trunk.num_prefix_tokens)
        self.fc_norm = _norm(trunk.fc_norm, "trunk.fc_norm")
        self.head = _head(tower.head)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.patch_weight, self.patch_bias, self.patch_stride)  # [B, width, grid, grid]
        x = x.reshape(x.size(0), x.size(1), -1).permute(0, 2, 1)  # [B, grid**2, width]
        pos = self.pos_embed.to(x.dtype)
        if not self.class_token:
            return x + pos
        cls = self.cls_token.to(x.dtype).expand(x.size(0), -1, -1)
        if self.pos_after_cls:
            return torch.cat([cls, x], dim=1) + pos
        return torch.cat([cls, x + pos], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_pre(self._tokens(x))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.map_pool:
            pooled = self.attn_pool(x[:, self.prefix :])
        elif self.avg_pool:
            pooled = x[:, self.prefix :].mean(dim=1)
        else:
            pooled = x[:, 0]
        return self.head(self.fc_norm(pooled))


def _head(head: nn.Module) -> nn.Module:
    """open_clip's projection after the trunk: none, or (Dropout, Linear)."""
    linears = [m for m in head.children() if not isinstance(m, nn.Dropout)]
    if not linears:
        return nn.Identity()
    if len(linears) != 1:
        raise GuieError(f"{_WHERE}: vision_cfg.timm_proj 'mlp' is not supported; use 'linear' or 'none'")
    return _Linear(linears[0], "head.proj")
