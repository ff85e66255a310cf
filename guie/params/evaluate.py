"""The `evaluate:` section: the held-out retrieval task and its standard error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from guie.params.fields import STRICT, Count, bounds


@dataclass(frozen=True)
class EvaluateParams:
    __pydantic_config__ = STRICT
    k: Count = 5
    queries_per_class: Count = 1  # the rest of each held-out class goes to the index
    # resamples for the standard error of mP@5 (one resample has no spread)
    bootstrap: Annotated[int, bounds(ge=2)] = 1000
    # images (a seeded sample of the held-out task's) on which the artifact is also called the host's
    # way, one image per call, and must equal its batched embedding within the export's parity promise
    artifact_sample: Count = 256
