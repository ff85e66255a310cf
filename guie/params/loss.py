"""The `loss:` section: a margin softmax loss (ArcFace or CosFace) with sub-centres and fixed or dynamic margins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator

from guie.params.fields import STRICT, Count, Margin, PositiveFloat, bounds

# A fixed margin's range per type. ArcFace: cos(theta + m) stays monotonic in theta only for m < pi/2.
# CosFace: cos(theta) - m is monotonic for any m, but m >= 2 can never be met (cosines differ by at
# most 2); the paper uses 0.35, so 1.5 leaves ample room and refuses typos.
_MARGIN_RANGE = {"arcface": bounds(ge=0.0, lt=math.pi / 2).func, "cosface": bounds(ge=0.0, le=1.5).func}


@dataclass(frozen=True)
class LossParams:
    """A margin softmax over scale * cosine to k sub-centres per class (sub-center ArcFace, Deng et al. 2020).

    type arcface (additive angular margin, Deng et al. 2019): the target logit is cos(theta + m), with a
    linear fallback past theta + m > pi. type cosface (additive cosine margin, Wang et al. 2018): the
    target logit is cos(theta) - m. margin "dynamic" gives each class its own m from its image count
    (GLR 2020 3rd-place formula: margin_min, margin_max, margin_power); a number gives every class that m.
    """

    __pydantic_config__ = STRICT
    type: Literal["arcface", "cosface"] = "arcface"  # before margin: margin's range check reads it
    margin: float | Literal["dynamic"] = "dynamic"  # a number: the same m for every class
    subcenters: Count = 3  # sub-centres per class; 1 = plain, no sub-centres
    scale: PositiveFloat = 30.0
    # cos(theta + m) stays monotonic in theta only for m < pi/2; margin_min <= margin_max (__post_init__)
    margin_min: Margin = 0.05  # margin of the most frequent class
    margin_max: Margin = 0.5  # margin of the rarest class (0.45 + 0.05 in the authors' code)
    margin_power: float = -0.25  # t_c = n_c ** power

    @field_validator("margin", mode="wrap")
    @classmethod
    def _margin_in_range(cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> object:
        try:
            margin = handler(value)
        except ValidationError:  # one message instead of one per union member (margin.float, margin.literal[...])
            raise ValueError('must be "dynamic" or a finite number') from None
        kind = info.data.get("type")  # absent when type itself was refused; its own error says so
        if margin != "dynamic" and kind in _MARGIN_RANGE:
            try:
                _MARGIN_RANGE[kind](margin)
            except ValueError as err:
                raise ValueError(f"{err} for type {kind}") from None
        return margin

    def __post_init__(self) -> None:
        # "loss." in the names: pydantic reports this at the section (the loader prints "loss: <message>"),
        # and both keys must be findable in the message
        if self.margin_min > self.margin_max:
            raise ValueError(f"loss.margin_min ({self.margin_min:g}) must be <= loss.margin_max ({self.margin_max:g})")
