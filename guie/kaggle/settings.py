"""The `kaggle:` section of params.yaml: where `guie submit` puts things and how patiently it talks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from guie.errors import GuieError

COMPETITION = "google-universal-image-embedding"
DEFAULT_DATASET_SLUG = "guie-submission-model"
DEFAULT_KERNEL_SLUG = "guie-submission"
# Kaggle slugs: lowercase words joined by single hyphens; datasets need 6..50 characters.
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_USERNAME = re.compile(r"^[A-Za-z0-9_-]+$")
Seconds = Annotated[float, Field(gt=0)]
Attempts = Annotated[int, Field(ge=1)]
UPLOAD_CHUNK_QUANTUM = 256 * 1024  # resumable uploads take parts in multiples of 256 KiB
ChunkBytes = Annotated[int, Field(ge=UPLOAD_CHUNK_QUANTUM, multiple_of=UPLOAD_CHUNK_QUANTUM)]


@dataclass(frozen=True)
class KaggleParams:
    __pydantic_config__ = ConfigDict(extra="forbid")
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


def _check_slug(field: str, slug: str) -> str:
    if not (6 <= len(slug) <= 50 and _SLUG.match(slug)):
        raise GuieError(
            f"params.yaml: kaggle.{field} {slug!r} is not a Kaggle slug: use 6-50 lowercase letters, digits and single hyphens"
        )
    return slug


@dataclass(frozen=True)
class Target:
    """The resolved names one submission uses."""

    username: str
    dataset_slug: str
    kernel_slug: str
    competition: str

    @property
    def dataset(self) -> str:
        return f"{self.username}/{self.dataset_slug}"

    @property
    def kernel(self) -> str:
        return f"{self.username}/{self.kernel_slug}"

    @property
    def notebook_url(self) -> str:
        return f"https://www.kaggle.com/code/{self.kernel}"

    @property
    def dataset_url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.dataset}"

    @property
    def rules_url(self) -> str:
        return rules_url(self.competition)


def rules_url(competition: str) -> str:
    return f"https://www.kaggle.com/competitions/{competition}/rules"


def resolve_target(params: KaggleParams, credentials_username: str | None) -> Target:
    """Fill the unset names: the owner from the credentials, the slugs from guie's defaults."""
    username = params.username or credentials_username or ""
    if not username:
        raise GuieError(
            "params.yaml: kaggle.username is empty and no Kaggle credentials name a user: "
            "set kaggle.username, or KAGGLE_USERNAME and KAGGLE_KEY"
        )
    if not _USERNAME.match(username):
        raise GuieError(f"params.yaml: kaggle.username {username!r} is not a Kaggle username")
    if not params.competition or not _SLUG.match(params.competition):
        raise GuieError(f"params.yaml: kaggle.competition {params.competition!r} is not a competition slug")
    return Target(
        username=username,
        dataset_slug=_check_slug("dataset_slug", params.dataset_slug or DEFAULT_DATASET_SLUG),
        kernel_slug=_check_slug("kernel_slug", params.kernel_slug or DEFAULT_KERNEL_SLUG),
        competition=params.competition,
    )
