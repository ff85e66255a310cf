"""The `preprocess:` section: the eval preprocessing shared by training, embedding, evaluation and
the exported model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from guie.params.fields import STRICT, bounds


@dataclass(frozen=True)
class PreprocessParams:
    """The eval preprocessing shared by training, embedding, evaluation and the exported model."""

    __pydantic_config__ = STRICT
    # < 16 px keeps no detail; > 4096 px is a typo that would fill RAM
    image_size: Annotated[int, bounds(ge=16, le=4096)] = 224
    resize: Literal["squash", "shortest_side_crop"] = "squash"  # squash: the 6th-place paper's resize
