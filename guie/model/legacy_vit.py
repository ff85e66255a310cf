"""An open_clip ViT image tower rewritten with ops that a torch 1.11 TorchScript reader knows.

Kaggle scores with torch 1.11. A scripted open_clip `VisionTransformer` saved by torch 2.x does
not load there: `nn.GELU` makes the archive file-format version 10 (1.11 reads up to 9) and
`nn.MultiheadAttention` serialises `aten::pad`, `aten::scaled_dot_product_attention` and
`aten::_native_multi_head_attention`. `LegacyVisionTower` computes the same function as
`visual(x)` with erf-GELU, explicit q/k/v projections, matmul + softmax attention and a strided
`conv2d` patch embedding. It shares the open_clip parameters (no copy), so it follows later
weight updates and costs no extra memory.

Inference only: patch dropout and attention dropout are train-time ops and are left out.
No submodule declares `Final` constants or `__constants__`: torch.jit orders those through a
Python set, which would make the saved bytes depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.transformer import (
    CustomResidualAttentionBlock,
    LayerNormFp32,
    LayerScale,
    QuickGELU,
    ResidualAttentionBlock,
    VisionTransformer,
)
from torch import nn

from guie.errors import GuieError

_WHERE = "LegacyVisionTower (open_clip vision_cfg)"


class _LayerNorm(nn.Module):
    """open_clip's LayerNorm / LayerNormFp32 as one functional call on the shared weights."""

    def __init__(self, norm: nn.Module, field: str):
        super().__init__()
        if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
            raise GuieError(f"{_WHERE}: {field} is {type(norm).__name__}; only an affine nn.LayerNorm is supported")
        self.weight = norm.weight
        self.bias = norm.bias
        self.normalized_shape: list[int] = [int(n) for n in norm.normalized_shape]
        self.eps = float(norm.eps)
        # LayerNormFp32 (fp16/bf16 towers) normalises in float32 and casts back
        self.upcast = isinstance(norm, LayerNormFp32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            y = F.layer_norm(x.to(torch.float32), self.normalized_shape, self.weight, self.bias, self.eps)
            return y.to(x.dtype)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class _LayerScale(nn.Module):
    """open_clip's or timm's LayerScale (both hold `gamma`) on the shared weight."""

    def __init__(self, scale: nn.Module):
        super().__init__()
        self.gamma = scale.gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _ErfGELU(nn.Module):
    """nn.GELU() spelled with erf: `aten::gelu` forces file-format version 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.erf(x * 0.7071067811865476))  # 1/sqrt(2)


class _TanhGELU(nn.Module):
    """nn.GELU(approximate='tanh') spelled out (1.11's aten::gelu has no `approximate`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2/pi)
        return 0.5 * x * (1.0 + torch.tanh(inner))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(act: nn.Module) -> nn.Module:
    if isinstance(act, QuickGELU):
        return _QuickGELU()
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return _ErfGELU()
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return _TanhGELU()
    raise GuieError(
        f"{_WHERE}: act_layer {act!r} is not supported; use nn.GELU (vision_cfg.act_kwargs "
        "approximate 'none' or 'tanh') or quick_gelu"
    )


def _layer_scale(scale: nn.Module) -> nn.Module:
    return _LayerScale(scale) if isinstance(scale, LayerScale) else nn.Identity()


def _custom_block_options(block: CustomResidualAttentionBlock) -> list[str]:
    attn = block.attn
    active = {
        "qk_norm": not isinstance(attn.ln_q, nn.Identity),
        "scaled_cosine_attn": bool(attn.scaled_cosine),
        "scale_heads": bool(attn.scale_heads),
        "scale_attn_inner": not isinstance(attn.ln_inner, nn.Identity),
        "scale_attn": not isinstance(block.ln_attn, nn.Identity),
        "scale_fc": not isinstance(block.mlp.ln, nn.Identity),
    }
    return [name for name, on in active.items() if on] or ["block_type='custom'"]


class _LegacyBlock(nn.Module):
    """open_clip's ResidualAttentionBlock (pre-norm, batch-first) with explicit attention."""

    def __init__(self, block: nn.Module, index: int):
        super().__init__()
        field = f"transformer.resblocks[{index}]"
        if isinstance(block, CustomResidualAttentionBlock):
            options = ", ".join(f"vision_cfg.{o}" for o in _custom_block_options(block))
            raise GuieError(f"{_WHERE}: {options} is not supported; use a config without it")
        if not isinstance(block, ResidualAttentionBlock):
            raise GuieError(f"{_WHERE}: {field} is {type(block).__name__}, not ResidualAttentionBlock")
        if hasattr(block, "ln_1_kv"):
            raise GuieError(f"{_WHERE}: {field} is a cross-attention block; only self-attention is supported")
        attn = block.attn
        if not (attn.batch_first and attn._qkv_same_embed_dim) or attn.bias_k is not None or attn.add_zero_attn:
            raise GuieError(
                f"{_WHERE}: {field}.attn must be a batch-first nn.MultiheadAttention with packed "
                "q/k/v and no bias_k/bias_v/add_zero_attn"
            )
        if attn.in_proj_bias is None or attn.out_proj.bias is None:
            raise GuieError(f"{_WHERE}: {field}.attn has no bias; only biased projections are supported")
        self.ln_1 = _LayerNorm(block.ln_1, f"{field}.ln_1")
        self.in_proj_weight = attn.in_proj_weight
        self.in_proj_bias = attn.in_proj_bias
        self.out_proj_weight = attn.out_proj.weight
        self.out_proj_bias = attn.out_proj.bias
        self.num_heads = int(attn.num_heads)
        self.head_dim = int(attn.head_dim)
        self.scale = 1.0 / math.sqrt(attn.head_dim)
        self.ls_1 = _layer_scale(block.ls_1)
        self.ln_2 = _LayerNorm(block.ln_2, f"{field}.ln_2")
        self.fc_weight = block.mlp.c_fc.weight
        self.fc_bias = block.mlp.c_fc.bias
        self.act = _activation(block.mlp.gelu)
        self.proj_weight = block.mlp.c_proj.weight
        self.proj_bias = block.mlp.c_proj.bias
        self.ls_2 = _layer_scale(block.ls_2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.size(0), x.size(1), x.size(2)
        # in_proj_weight stacks [W_q; W_k; W_v], each head-major: split to [3, B, heads, L, head_dim]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, tokens, width)
        return F.linear(out, self.out_proj_weight, self.out_proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attention(self.ln_1(x)))
        hidden = self.act(F.linear(self.ln_2(x), self.fc_weight, self.fc_bias))
        return x + self.ls_2(F.linear(hidden, self.proj_weight, self.proj_bias))


class LegacyVisionTower(nn.Module):
    """`visual(x)` of an open_clip ViT for x float [B, 3, S, S], scriptable for torch 1.11."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise GuieError(
                f"{_WHERE}: the image tower is {type(visual).__name__}; only open_clip's "
                "VisionTransformer is supported (no timm_model_name, no ResNet layers)"
            )
        if visual.attn_pool is not None:
            raise GuieError(f"{_WHERE}: vision_cfg.attentional_pool is not supported; use pool_type 'tok' or 'avg'")
        if visual.pool_type not in ("tok", "avg"):
            raise GuieError(f"{_WHERE}: vision_cfg.pool_type {visual.pool_type!r} is not supported; use 'tok' or 'avg'")
        if visual.output_tokens:
            raise GuieError(f"{_WHERE}: vision_cfg.output_tokens is not supported; the tower returns pooled features")
        if not visual.transformer.batch_first:
            raise GuieError(f"{_WHERE}: transformer.batch_first=False is not supported")
        conv = visual.conv1
        if conv.bias is not None or conv.groups != 1 or tuple(conv.padding) != (0, 0) or tuple(conv.dilation) != (1, 1):
            raise GuieError(f"{_WHERE}: conv1 must be a plain bias-free patch embedding (padding 0, dilation 1)")
        self.patch_weight = conv.weight
        self.patch_stride: list[int] = [int(s) for s in conv.stride]
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = nn.Identity() if isinstance(visual.ln_pre, nn.Identity) else _LayerNorm(visual.ln_pre, "ln_pre")
        self.blocks = nn.ModuleList(_LegacyBlock(b, i) for i, b in enumerate(visual.transformer.resblocks))
        self.ln_post = _LayerNorm(visual.ln_post, "ln_post")
        self.avg_pool = visual.pool_type == "avg"
        self.final_ln_after_pool = bool(visual.final_ln_after_pool)
        self.proj = visual.proj  # a shared Parameter, or None after open_clip pruned the head

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.avg_pool:
            return x[:, 1:].mean(dim=1)
        return x[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.patch_weight, None, self.patch_stride)  # [B, width, grid, grid]
        x = x.reshape(x.size(0), x.size(1), -1).permute(0, 2, 1)  # [B, grid**2, width]
        cls = self.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.size(0), -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        if self.final_ln_after_pool:
            pooled = self.ln_post(self._pool(x))
        else:
            pooled = self._pool(self.ln_post(x))
        if self.proj is not None:
            pooled = pooled @ self.proj
        return pooled
