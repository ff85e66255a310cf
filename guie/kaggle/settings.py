"""The `kaggle:` section of params.yaml: where `guie submit` puts things and how patiently it talks."""

from __future__ import annotations

import re
from dataclasses import dataclass

from guie.errors import GuieError
from guie.params.kaggle import KaggleParams

DEFAULT_DATASET_SLUG = "guie-submission-model"
DEFAULT_KERNEL_SLUG = "guie-submission"
# Kaggle slugs: lowercase words joined by single hyphens; datasets need 6..50 characters.
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_USERNAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _check_slug(field: str, slug: str) -> str:
    if not (6 <= len(slug) <= 50 and _SLUG.match(slug)):
        raise GuieError(
            f"params.yaml: kaggle.{field} {slug!r} is not a Kaggle slug: "
            "use 6-50 lowercase letters, digits and single hyphens"
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
