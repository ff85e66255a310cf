"""The `pca:` section: the projection to the competition's embedding size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from guie.contract import EMBEDDING_DIMS
from guie.params.fields import STRICT, Count, bounds

# The competition's maximum embedding size: the exported model must output at most this many dims.
COMPETITION_MAX_DIMS = EMBEDDING_DIMS


@dataclass(frozen=True)
class PcaParams:
    __pydantic_config__ = STRICT
    # the competition's maximum embedding size
    dims: Annotated[int, bounds(ge=1, le=COMPETITION_MAX_DIMS)] = COMPETITION_MAX_DIMS
    whiten: bool = False
    batch_size: Count = 64  # images embedded per forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the PCA set, evaluate's baseline and artifact embed
