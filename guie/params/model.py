"""The `model:` section: which open_clip tower, its weights, and the head on top."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from guie.params.fields import STRICT, Count, Fraction, bounds


@dataclass(frozen=True)
class ModelParams:
    __pydantic_config__ = STRICT
    name: str = "guie-tiny-vit"  # an open_clip model name (ViT-H-14 for the real recipe)
    pretrained: str = ""  # open_clip tag or checkpoint path; "" = seeded random init written by `guie weights`
    # patches every this many px: 0 = the patch size; smaller overlaps them (a denser grid, more tokens:
    # the 1st place ran ViT-H-14's 14 px patches at stride 12 on 290 px images); checked when the tower loads
    patch_stride: Annotated[int, bounds(ge=0)] = 0
    head_dim: Count = 256  # BN -> Dropout -> Linear(tower dim -> head_dim); >= pca.dims (checked in parse_params)
    dropout: Fraction = 0.2  # 1 would zero every feature
