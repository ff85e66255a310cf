"""The `kaggle:` section: where `guie submit` puts things and how patiently it talks to Kaggle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from guie.params.fields import STRICT

COMPETITION = "google-universal-image-embedding"
Seconds = Annotated[float, Field(gt=0)]
Attempts = Annotated[int, Field(ge=1)]
UPLOAD_CHUNK_QUANTUM = 256 * 1024  # resumable uploads take parts in multiples of 256 KiB
ChunkBytes = Annotated[int, Field(ge=UPLOAD_CHUNK_QUANTUM, multiple_of=UPLOAD_CHUNK_QUANTUM)]


@dataclass(frozen=True)
class KaggleParams:
    __pydantic_config__ = STRICT  # `.inf` refused: a wait that never ends, a timeout Python cannot set
    username: str = ""  # owner of the dataset and notebook; "" = the username in your Kaggle credentials
    dataset_slug: str = ""  # private dataset holding submission.zip; "" = guie-submission-model
    kernel_slug: str = ""  # the submission notebook; "" = guie-submission
    competition: str = COMPETITION
    # "auto": a GPU exactly when the artifact's weights are on CUDA (export.device: cuda); false with
    # a CUDA artifact is refused (the host's plain torch.jit.load needs the GPU the weights name)
    enable_gpu: Literal["auto"] | bool = "auto"
    poll_interval_s: Seconds = 15.0  # first wait between status checks; doubles up to poll_max_interval_s
    poll_max_interval_s: Seconds = 120.0
    dataset_timeout_s: Seconds = 1800.0  # give up waiting for Kaggle to process the uploaded dataset version
    kernel_timeout_s: Seconds = 3600.0  # give up waiting for the notebook run (normally a few minutes)
    score_timeout_s: Seconds = 32400.0  # give up waiting for the score (Kaggle allows a scoring run 9 hours)
    request_timeout_s: Seconds = 60.0  # connect and read timeout of every HTTP call (the client has none)
    submissions_scanned: Attempts = 100  # newest submissions searched for this artifact before submitting again
    max_attempts: Attempts = 4  # tries per call on 429, 5xx and network errors (the client's retry for minutes)
    retry_backoff_s: Seconds = 2.0  # wait before the second try; doubles each try, at most 60 s
    # the zip goes up in parts of this many bytes (a multiple of 256 KiB, as Kaggle's upload URL
    # requires); a dropped connection resends from the last byte Kaggle has, not from the start
    upload_chunk_bytes: ChunkBytes = 64 * 1024 * 1024
