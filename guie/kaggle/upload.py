"""Put submission.zip into a private Kaggle dataset: create it on first use, a new version after.

The upload runs StartBlobUpload -> PUT to the returned URL -> create with the token, like the
client's. The client sends the whole file in one PUT with no timeout, prints its errors, and keeps
the signed upload URL in a state file under $TMPDIR that a later run "resumes" against a dead URL.
A ViT-H zip is 2.4 GB, so guie uploads in parts instead, over the same resumable protocol the
upload URL speaks (Content-Range parts, 308 + Range for "how much arrived"): a dropped connection
resends from the last byte Kaggle holds; a part that fails for good cancels the upload and no
dataset version is created (the token is never used). Nothing is kept in $TMPDIR; a run that is
killed mid-upload starts the upload again next time.

Before uploading, the dataset on Kaggle is asked whether its newest version already holds this
artifact (its sha256 is in the version notes), so a fresh clone does not upload it twice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
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


class UploadFailed(GuieError):
    """A part failed for good; the upload was cancelled and nothing was created."""


def _parse_range_end(response) -> int:
    """Bytes Kaggle holds, from a 308's `Range: bytes=0-N` (none: nothing arrived yet)."""
    value = response.headers.get("Range", "")
    if not value:
        return 0
    try:
        first, last = value.removeprefix("bytes=").split("-")
        if int(first) != 0:
            raise ValueError
        return int(last) + 1
    except ValueError:
        raise GuieError(f"upload: Kaggle answered an unreadable Range header {value!r}; re-run `guie submit`") from None


class _PartFailed(Exception):
    """A part did not get through in a way another try may fix; the message says how."""


class _Parts:
    """The state of one upload in parts: the offset Kaggle holds, and the failures in a row since
    the last progress (with the backoff they have grown)."""

    def __init__(self, client: KaggleClient, path: Path, url: str, console: Console) -> None:
        import requests

        self.client, self.params, self.url, self.console = client, client.params, url, console
        self.name, self.total = path.name, path.stat().st_size
        self.session = requests.Session()  # the URL is pre-signed: no Kaggle credentials go with it
        self.session.mount("http://", requests.adapters.HTTPAdapter(max_retries=0))
        self.session.mount("https://", requests.adapters.HTTPAdapter(max_retries=0))
        self.timeout = self.params.request_timeout_s
        self.offset, self.failures, self.delay = 0, 0, self.params.retry_backoff_s

    def query(self) -> int | None:
        """How many bytes arrived (None: all of them)."""
        response = self.session.put(self.url, headers={"Content-Range": f"bytes */{self.total}"}, timeout=self.timeout)
        if response.status_code in (200, 201):
            return None
        if response.status_code == 308:
            return _parse_range_end(response)
        response.raise_for_status()
        raise GuieError(f"upload {self.name}: unexpected answer HTTP {response.status_code} to a status query")

    def send(self, data: bytes, end: int) -> int | None:
        """PUT `data` as bytes offset..end-1; the bytes Kaggle then holds, more than before (None:
        all of them). Raises _PartFailed for what a retry may fix, UploadFailed for the rest."""
        import requests

        headers = {"Content-Range": f"bytes {self.offset}-{end - 1}/{self.total}"}
        try:
            response = self.session.put(self.url, data=data, headers=headers, timeout=self.timeout)
            return self._judge(response, end)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            raise _PartFailed(f"connection lost ({type(err).__name__})") from None

    def _judge(self, response, end: int) -> int | None:
        status = response.status_code
        if status in (200, 201):
            return None
        if status == 308:
            got = _parse_range_end(response)
            if got > self.offset:
                return got
            raise _PartFailed(f"Kaggle kept no bytes of part {self.offset}-{end - 1}")
        if status in (404, 410):
            raise UploadFailed(
                f"upload {self.name}: the upload URL expired (HTTP {status}) after "
                f"{self.offset / 1e6:.1f} of {self.total / 1e6:.1f} MB; re-run `guie submit` to start a fresh upload"
            )
        if status == 429 or status >= 500:
            raise _PartFailed(f"HTTP {status}")
        raise UploadFailed(
            f"upload {self.name}: Kaggle refused part {self.offset}-{end - 1} "
            f"(HTTP {status}: {self.client.redact(response.text[:200])}); the upload was "
            "cancelled and no dataset version was created"
        )

    def progressed(self, got: int) -> None:
        self.offset, self.failures, self.delay = got, 0, self.params.retry_backoff_s

    def recover(self, problem: str, end: int) -> bool:
        """After a failed part: give up after max_attempts in a row, else wait, ask how much arrived
        and go on from there. True when all of it arrived."""
        import requests

        self.failures += 1
        if self.failures >= self.params.max_attempts:
            raise UploadFailed(
                f"upload {self.name}: part {self.offset}-{end - 1} failed {self.failures} times in a row ({problem}); "
                f"the upload was cancelled and no dataset version was created; re-run `guie submit`"
            )
        self.console.print(f"upload {self.name}: {problem} at byte {self.offset}; resuming", highlight=False)
        self.client._sleep(min(self.delay, 60.0))
        self.delay *= 2
        try:
            got = self.query()
        except (requests.RequestException, GuieError):
            return False  # ask again with the next try
        if got is None:
            return True
        if got > self.offset:  # the dropped part got partly through: that counts as progress
            self.failures, self.delay = 0, self.params.retry_backoff_s
        self.offset = got
        return False


def _upload_parts(client: KaggleClient, path: Path, url: str, console: Console) -> None:
    """PUT `path` to the resumable upload `url` in parts; on a dropped connection or a 5xx/429,
    ask how much arrived and go on from there. Raise UploadFailed after max_attempts tries
    without progress, or on any other answer."""
    parts = _Parts(client, path, url, console)
    with open(path, "rb") as f, parts.session:
        while True:
            end = min(parts.offset + client.params.upload_chunk_bytes, parts.total)
            f.seek(parts.offset)
            data = f.read(end - parts.offset)
            try:
                got = parts.send(data, end)
            except _PartFailed as err:
                if parts.recover(str(err), end):
                    return
                continue
            if got is None:
                return
            parts.progressed(got)


def _cancel_upload(url: str, timeout: float) -> None:
    """Best effort: tell the upload URL to drop what it holds (a DELETE ends a resumable upload)."""
    import requests

    try:
        requests.delete(url, timeout=timeout)
    except requests.RequestException:
        pass


def _upload_blob(client: KaggleClient, path: Path, console: Console) -> str:
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest

    request = ApiStartBlobUploadRequest()
    request.type = ApiBlobType.DATASET
    request.name = path.name
    request.content_length = path.stat().st_size
    request.last_modified_epoch_seconds = int(path.stat().st_mtime)

    started = client.rpc(
        f"start upload of {path.name}", lambda kaggle: kaggle.blobs.blob_api_client.start_blob_upload(request)
    )
    try:
        _upload_parts(client, path, started.create_url, console)
    except UploadFailed:
        _cancel_upload(started.create_url, client.params.request_timeout_s)
        raise
    return started.token


@dataclass(frozen=True)
class DatasetOnKaggle:
    version: int  # the newest version's number
    holds: bool  # the newest version is this artifact


def dataset_on_kaggle(client: KaggleClient, target: Target, sha256: str) -> DatasetOnKaggle | None:
    """The dataset as Kaggle has it (None: it does not exist yet)."""
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

    request = ApiGetDatasetRequest()
    request.owner_slug = target.username
    request.dataset_slug = target.dataset_slug

    dataset = client.rpc(
        f"look up dataset {target.dataset}",
        lambda kaggle: kaggle.datasets.dataset_api_client.get_dataset(request),
        allow=(404,),
    )
    if dataset is None:
        return None
    versions = {v.version_number: v.version_notes or "" for v in dataset.versions or [] if v.version_number}
    latest = dataset.current_version_number or max(versions, default=1)
    notes = versions.get(latest, "")
    # version 1 comes from CreateDataset, which records the provenance in the description only
    holds = _mentions(notes, sha256) or (latest == 1 and _mentions(dataset.description, sha256))
    return DatasetOnKaggle(version=latest, holds=holds)


def _mentions(text: str | None, sha256: str) -> bool:
    found = Provenance.parse(text)
    return found is not None and found.sha256 == sha256


def upload_dataset(
    client: KaggleClient,
    zip_in_folder: Path,
    target: Target,
    provenance: Provenance,
    console: Console,
    on_kaggle: DatasetOnKaggle | None,
) -> str:
    """Upload the zip as a new dataset or a new version of it; return which it was."""
    from kagglesdk.datasets.types.dataset_api_service import (
        ApiCreateDatasetRequest,
        ApiCreateDatasetVersionRequest,
        ApiCreateDatasetVersionRequestBody,
        ApiDatasetNewFile,
    )

    if on_kaggle is not None:
        # Kaggle refuses (403) a new version while the previous one is still processing
        wait_dataset_ready(client, target, console, previous=True)
    size_mb = zip_in_folder.stat().st_size / 1e6
    with console.status(f"Uploading {zip_in_folder.name} ({size_mb:.1f} MB) to {target.dataset}…"):
        token = _upload_blob(client, zip_in_folder, console)
    new_file = ApiDatasetNewFile()
    new_file.token = token
    meta = dataset_metadata(target, provenance)
    if on_kaggle is None:
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
        body.description = meta["description"]
        body.files = [new_file]
        request = ApiCreateDatasetVersionRequest()
        request.owner_slug = target.username
        request.dataset_slug = target.dataset_slug
        request.body = body
        kind, what = "new version", f"add a version to dataset {target.dataset}"
        rpc = lambda kaggle: kaggle.datasets.dataset_api_client.create_dataset_version(request)  # noqa: E731

    allow = () if on_kaggle is None else (403,)
    response = client.rpc(what, rpc, idempotent=False, allow=allow)
    if response is None:  # 403: a version started processing in between (another run?); wait, then once more
        console.print(f"dataset {target.dataset}: Kaggle refused a new version (HTTP 403); waiting until it is ready")
        wait_dataset_ready(client, target, console, previous=True)
        response = client.rpc(what, rpc, idempotent=False)
    if response.error:
        raise GuieError(f"{what}: Kaggle says: {client.redact(response.error)}")
    console.print(f"dataset {target.dataset}: {kind} ({target.dataset_url})")
    return kind


def wait_dataset_ready(client: KaggleClient, target: Target, console: Console, *, previous: bool = False) -> None:
    """Kaggle processes a new version before notebooks can attach it (and before it takes the
    next version: `previous` says that is what we wait for)."""
    params = client.params

    def check() -> tuple[bool, str]:
        status = client.call(f"check dataset {target.dataset}", lambda: client.api.dataset_status(target.dataset))
        if status == "failed":
            if previous:  # a failed version takes no more processing: the next may come
                return True, status
            raise GuieError(
                f"Kaggle failed to process dataset {target.dataset}; "
                f"see {target.dataset_url}, then re-run `guie submit`"
            )
        return status == "ready", status

    poll_until(
        f"Kaggle is processing {'the previous version of ' if previous else ''}dataset {target.dataset}",
        check,
        params=params,
        timeout_s=params.dataset_timeout_s,
        console=console,
        on_timeout=f"see {target.dataset_url}; re-running `guie submit` goes on waiting"
        + ("" if previous else " without uploading again"),
    )
