"""Put submission.zip into a private Kaggle dataset: create it on first use, a new version after.

The upload runs StartBlobUpload -> PUT to the returned URL -> create with the token, like the
client's, but without the client's resumable-upload state file in $TMPDIR: a failed upload is
simply started again next time instead of being "resumed" against a dead URL.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rich.console import Console

from guie.atomic import write_text
from guie.errors import GuieError
from guie.kaggle.client import KaggleClient
from guie.kaggle.notebook import ZIP_NAME
from guie.kaggle.poll import poll_until
from guie.kaggle.provenance import Provenance, file_sha256
from guie.kaggle.settings import Target

LICENSE = "other"  # a private model artifact; the owner decides its terms


def dataset_title(target: Target) -> str:
    return target.dataset_slug.replace("-", " ")


def dataset_metadata(target: Target, provenance: Provenance) -> dict:
    return {
        "title": dataset_title(target),
        "id": target.dataset,
        "licenses": [{"name": LICENSE}],
        "description": f"Model artifact uploaded by `guie submit` ({provenance.describe()}).",
    }


def write_dataset_folder(folder: Path, zip_path: Path, target: Target, provenance: Provenance) -> Path:
    """submission.zip (hard-linked when possible: it may be gigabytes) + dataset-metadata.json."""
    dest = folder / ZIP_NAME
    if not (dest.is_file() and (os.path.samefile(dest, zip_path) or file_sha256(dest) == provenance.sha256)):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{ZIP_NAME}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(zip_path, tmp)
        except OSError:
            shutil.copyfile(zip_path, tmp)
        os.replace(tmp, dest)
    write_text(folder / "dataset-metadata.json", json.dumps(dataset_metadata(target, provenance), indent=2) + "\n")
    return dest


def _upload_blob(client: KaggleClient, path: Path) -> str:
    import requests
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest

    request = ApiStartBlobUploadRequest()
    request.type = ApiBlobType.DATASET
    request.name = path.name
    request.content_length = path.stat().st_size
    request.last_modified_epoch_seconds = int(path.stat().st_mtime)

    def start():
        with client.sdk() as kaggle:
            return kaggle.blobs.blob_api_client.start_blob_upload(request)

    started = client.call(f"start upload of {path.name}", start)

    def put() -> None:
        with open(path, "rb") as f:  # the upload URL is pre-signed: no Kaggle credentials go with it
            response = requests.put(started.create_url, data=f, timeout=client.params.request_timeout_s)
        response.raise_for_status()

    client.call(f"upload {path.name}", put)
    return started.token


def upload_dataset(
    client: KaggleClient, zip_in_folder: Path, target: Target, provenance: Provenance, console: Console
) -> str:
    """Upload the zip as a new dataset or a new version of it; return which it was."""
    from kagglesdk.datasets.types.dataset_api_service import (
        ApiCreateDatasetRequest,
        ApiCreateDatasetVersionRequest,
        ApiCreateDatasetVersionRequestBody,
        ApiDatasetNewFile,
    )

    exists = client.call(
        f"look up dataset {target.dataset}", lambda: client.api.dataset_status(target.dataset), allow=(404,)
    )
    size_mb = zip_in_folder.stat().st_size / 1e6
    with console.status(f"Uploading {zip_in_folder.name} ({size_mb:.1f} MB) to {target.dataset}…"):
        token = _upload_blob(client, zip_in_folder)
    new_file = ApiDatasetNewFile()
    new_file.token = token
    meta = dataset_metadata(target, provenance)
    if exists is None:
        request = ApiCreateDatasetRequest()
        request.owner_slug = target.username
        request.slug = target.dataset_slug
        request.title = meta["title"]
        request.license_name = LICENSE
        request.description = meta["description"]
        request.is_private = True
        request.files = [new_file]
        kind, what = "created", f"create dataset {target.dataset}"
        rpc = lambda kaggle: kaggle.datasets.dataset_api_client.create_dataset(request)  # noqa: E731
    else:
        body = ApiCreateDatasetVersionRequestBody()
        body.version_notes = provenance.describe()
        body.files = [new_file]
        request = ApiCreateDatasetVersionRequest()
        request.owner_slug = target.username
        request.dataset_slug = target.dataset_slug
        request.body = body
        kind, what = "new version", f"add a version to dataset {target.dataset}"
        rpc = lambda kaggle: kaggle.datasets.dataset_api_client.create_dataset_version(request)  # noqa: E731

    def create():
        with client.sdk() as kaggle:
            return rpc(kaggle)

    response = client.call(what, create, idempotent=False)
    if response.error:
        raise GuieError(f"{what}: Kaggle says: {client.redact(response.error)}")
    console.print(f"dataset {target.dataset}: {kind} ({target.dataset_url})")
    return kind


def wait_dataset_ready(client: KaggleClient, target: Target, console: Console) -> None:
    """Kaggle processes a new version before notebooks can attach it."""
    params = client.params

    def check() -> tuple[bool, str]:
        status = client.call(f"check dataset {target.dataset}", lambda: client.api.dataset_status(target.dataset))
        if status == "failed":
            raise GuieError(
                f"Kaggle failed to process dataset {target.dataset}; see {target.dataset_url}, then re-run `guie submit`"
            )
        return status == "ready", status

    poll_until(
        f"Kaggle is processing dataset {target.dataset}",
        check,
        interval_s=params.poll_interval_s,
        max_interval_s=params.poll_max_interval_s,
        timeout_s=params.dataset_timeout_s,
        console=console,
        on_timeout=f"see {target.dataset_url}; re-running `guie submit` goes on waiting without uploading again",
    )
