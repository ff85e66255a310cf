"""The `export:` section: where the artifact's weights live and in what precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from guie.params.fields import STRICT


@dataclass(frozen=True)
class ExportParams:
    __pydantic_config__ = STRICT
    # where the artifact's weights live; cuda for big towers (the scorer has a GPU)
    device: Literal["cpu", "cuda"] = "cpu"
    half: bool = False  # float16 tower (needs device: cuda; torch 1.11 has no float16 CPU kernels)
    # test-time augmentation inside the artifact. flip: average the L2-normalised head features of the
    # image and its horizontal mirror, renormalise, then project; PCA is fitted on the same TTA features.
    # Costs two tower passes per image in the scorer's budget.
    tta: Literal["none", "flip"] = "none"

    @property
    def flip_tta(self) -> bool:
        """Whether PCA, evaluation and the artifact embed with flip TTA."""
        return self.tta == "flip"
