"""The `preprocess:` section: the eval preprocessing shared by training, embedding, evaluation and
the exported model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from guie.params.fields import STRICT, ImageSide


@dataclass(frozen=True)
class PreprocessParams:
    """The eval preprocessing shared by training, embedding, evaluation and the exported model."""

    __pydantic_config__ = STRICT
    image_size: ImageSide = 224  # a stage may train at another (train.stages.<name>.image_size)
    resize: Literal["squash", "shortest_side_crop"] = "squash"  # squash: the 6th-place paper's resize
