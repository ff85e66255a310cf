"""Download Kaggle datasets and competition files through the same client layer as `guie submit`.

Files land in `dest` under the names the kaggle CLI gives them (a whole dataset as
`<slug>.zip`, a whole competition as `<slug>.zip`); archives are not extracted here (the data
stage extracts them with its own checks). A download goes to `<name>.part` first, resumes from
there after a network failure (the client checks the ETag before appending), and is renamed
only when complete, so `dest` never holds half a file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from guie.errors import GuieError
from guie.kaggle.client import KaggleClient
from guie.params.kaggle import KaggleParams


def _url_name(response: Any) -> str:
    """The last path segment of the final (redirected) URL, as the kaggle CLI names files;
    decoded first, so an encoded slash cannot smuggle a directory into the name."""
    return unquote(urlparse(response.url).path).replace("\\", "/").rsplit("/", 1)[-1]


def _fetch(
    client: KaggleClient,
    what: str,
    rpc: Callable[[Any], Any],
    dest: Path,
    name_of: Callable[[Any], str],
    competition: str | None = None,
) -> Path:
    """Run a download RPC (it answers with a redirect to the file) and stream the file to dest."""
    dest.mkdir(parents=True, exist_ok=True)

    def attempt() -> Path:
        kaggle = client.sdk()
        with kaggle:
            response = rpc(kaggle)
            name = name_of(response)
            if not name or name in (".", ".."):
                raise GuieError(f"{what}: Kaggle answered with no file name ({response.url})")
            final = dest / name
            size = response.headers.get("Content-Length")
            if final.is_file() and size is not None and final.stat().st_size == int(size):
                response.close()
                return final
            part = dest / f"{name}.part"
            client.api.download_file(
                response,
                str(part),
                kaggle.http_client(),
                quiet=True,
                resume=True,
                max_retries=0,  # guie retries (and resumes from the .part)
                timeout=client.params.request_timeout_s,
            )
        os.replace(part, final)
        return final

    return client.call(what, attempt, competition=competition)


def download_kaggle_dataset(
    owner_slug: str,
    dest: Path,
    file: str | None = None,
    *,
    params: KaggleParams | None = None,
    client: KaggleClient | None = None,
) -> Path:
    """Download dataset `owner/slug` (all of it as `<slug>.zip`, or one `file`) into `dest`; return the path."""
    from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

    parts = owner_slug.split("/")
    if len(parts) != 2 or not all(parts):
        raise GuieError(
            f"kaggle dataset {owner_slug!r}: expected owner/slug, "
            "e.g. rhtsingh/130k-images-512x512-universal-image-embeddings"
        )
    request = ApiDownloadDatasetRequest()
    request.owner_slug, request.dataset_slug = parts
    request.file_name = file
    client = client or KaggleClient(params or KaggleParams())
    return _fetch(
        client,
        f"download kaggle dataset {owner_slug}" + (f" file {file}" if file else ""),
        lambda kaggle: kaggle.datasets.dataset_api_client.download_dataset(request),
        Path(dest),
        _url_name if file else (lambda _: f"{parts[1]}.zip"),
    )


def download_kaggle_competition(
    slug: str,
    dest: Path,
    files: list[str] | None = None,
    *,
    params: KaggleParams | None = None,
    client: KaggleClient | None = None,
) -> list[Path]:
    """Download competition `slug`'s data (all of it as `<slug>.zip`, or each of `files`) into `dest`."""
    from kagglesdk.competitions.types.competition_api_service import (
        ApiDownloadDataFileRequest,
        ApiDownloadDataFilesRequest,
    )

    if not slug or "/" in slug:
        raise GuieError(f"kaggle competition {slug!r}: expected a competition slug, e.g. landmark-recognition-2021")
    client = client or KaggleClient(params or KaggleParams())
    if not files:
        request = ApiDownloadDataFilesRequest()
        request.competition_name = slug

        def whole_name(response: Any) -> str:
            return slug + (Path(_url_name(response)).suffix or ".zip")

        rpc = lambda kaggle: kaggle.competitions.competition_api_client.download_data_files(request)  # noqa: E731
        return [_fetch(client, f"download competition {slug} data", rpc, Path(dest), whole_name, competition=slug)]
    paths = []
    for name in files:
        request = ApiDownloadDataFileRequest()
        request.competition_name = slug
        request.file_name = name
        rpc = lambda kaggle, request=request: kaggle.competitions.competition_api_client.download_data_file(request)  # noqa: E731
        paths.append(
            _fetch(client, f"download competition {slug} file {name}", rpc, Path(dest), _url_name, competition=slug)
        )
    return paths
