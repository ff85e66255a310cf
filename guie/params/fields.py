"""Validated field types every params section uses: ranges with messages that state the range."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)  # `.inf` / `.nan` are never a sensible setting


def bounds(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> AfterValidator:
    """A range check whose message states the whole allowed range, e.g. "must be in [1, 64]"
    (`_format_errors` adds the key and the value given)."""
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else ""
    high = f"{le:g}]" if le is not None else f"{lt:g})" if lt is not None else ""
    if low and high:
        allowed = f"in {low}, {high}"
    elif low:
        allowed = (">= " if ge is not None else "> ") + low[1:]
    else:
        allowed = ("<= " if le is not None else "< ") + high[:-1]

    def check(value: float) -> float:
        too_low = (ge is not None and value < ge) or (gt is not None and value <= gt)
        too_high = (le is not None and value > le) or (lt is not None and value >= lt)
        if too_low or too_high:
            raise ValueError(f"must be {allowed}")
        return value

    return AfterValidator(check)


Count = Annotated[int, bounds(ge=1)]  # sizes, counts, steps: at least 1


PositiveFloat = Annotated[float, bounds(gt=0.0)]  # learning rates, scales


Fraction = Annotated[float, bounds(ge=0.0, lt=1.0)]  # a share that must leave something: [0, 1)


# 0 epochs is allowed on purpose: a last stage with `epochs: 0` exports the model it starts from (an
# ablation); negative counts are refused.
Epochs = Annotated[int, bounds(ge=0)]


# numpy's and sklearn's seeds are [0, 2**32 - 1] (torch takes more); a run's seed adds the stage's
# depth and a soup ingredient's seed to `seed`, and the sum must stay in range (parse_params)
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


# an image's square side: < 16 px keeps no detail; > 4096 px is a typo that would fill RAM
ImageSide = Annotated[int, bounds(ge=16, le=4096)]


Margin = Annotated[float, bounds(ge=0.0, lt=math.pi / 2)]


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
