"""The `loss:` section: sub-center ArcFace with dynamic margins."""

from __future__ import annotations

from dataclasses import dataclass

from guie.params.fields import STRICT, Count, Margin, PositiveFloat


@dataclass(frozen=True)
class LossParams:
    """Sub-center ArcFace with per-class dynamic margins (GLR 2020 3rd-place formula)."""

    __pydantic_config__ = STRICT
    subcenters: Count = 3
    scale: PositiveFloat = 30.0
    # cos(theta + m) stays monotonic in theta only for m < pi/2; margin_min <= margin_max (parse_params)
    margin_min: Margin = 0.05  # margin of the most frequent class
    margin_max: Margin = 0.5  # margin of the rarest class (0.45 + 0.05 in the authors' code)
    margin_power: float = -0.25  # t_c = n_c ** power
