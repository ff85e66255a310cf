"""The dataset upload in parts, through the fake Kaggle's resumable upload URL: parts, a dropped
connection resumed from what arrived, a part that fails for good cancelling everything."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_kaggle import USER
from pydantic import TypeAdapter, ValidationError
from tiny_submission import make_submission_zip

from guie.errors import GuieError
from guie.params.kaggle import UPLOAD_CHUNK_QUANTUM, KaggleParams

DATASET = f"{USER}/guie-submission-model"
CHUNK = UPLOAD_CHUNK_QUANTUM  # the smallest part Kaggle's upload URL takes: 256 KiB


@pytest.fixture
def big_zip(tmp_path: Path) -> Path:
    """A submission.zip of about 2.6 parts: the tiny model plus incompressible padding (not GBs)."""
    path = make_submission_zip(tmp_path / "big" / "submission.zip")
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr("padding.bin", np.random.default_rng(0).bytes(int(2.5 * CHUNK)))
    return path


@pytest.fixture
def chunked(params) -> KaggleParams:
    return replace(params, upload_chunk_bytes=CHUNK)


def _parts(fake) -> list[str]:
    return [c.body["range"] for c in fake.calls if c.rpc == "upload"]


def test_the_zip_goes_up_in_parts_and_arrives_whole(
    run_submit, fake, env_credentials, chunked, big_zip, tmp_path, console
):
    run_submit(chunked, big_zip, tmp_path / "work", console)
    size = big_zip.stat().st_size
    assert size > 2 * CHUNK
    assert _parts(fake) == [
        f"bytes 0-{CHUNK - 1}/{size}",
        f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}",
        f"bytes {2 * CHUNK}-{size - 1}/{size}",
    ]
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": big_zip.read_bytes()}


def test_a_dropped_connection_resumes_from_the_bytes_kaggle_holds(
    run_submit, fake, env_credentials, chunked, big_zip, tmp_path, console
):
    fake.break_upload(after=1)  # part 2: half of it arrives, then the line drops unanswered
    result = run_submit(chunked, big_zip, tmp_path / "work", console)
    size = big_zip.stat().st_size
    held = CHUNK + CHUNK // 2
    assert fake.names().count("upload-query") == 1 and fake.names().count("StartBlobUpload") == 1
    parts = _parts(fake)
    assert parts[:2] == [f"bytes 0-{CHUNK - 1}/{size}", f"bytes {CHUNK}-{2 * CHUNK - 1}/{size}"]
    assert parts[2] == f"bytes {held}-{min(held + CHUNK, size) - 1}/{size}"  # not from 0
    sent = sum(c.body["bytes"] for c in fake.calls if c.rpc == "upload")
    assert sent < size + CHUNK  # only the lost part went twice
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": big_zip.read_bytes()}
    assert "connection lost" in console.export_text() and result.submission_ref == 1000


def test_a_part_that_fails_for_good_cancels_and_creates_no_version(
    run_submit, fake, env_credentials, chunked, big_zip, submission_zip, tmp_path, console
):
    run_submit(chunked, submission_zip, tmp_path / "work", console)  # version 1: another artifact
    fake.fail("upload", 400, message="Invalid part", after=1)
    with pytest.raises(GuieError, match=r"refused part .*HTTP 400.*cancelled and no dataset version was created"):
        run_submit(chunked, big_zip, tmp_path / "work", console)
    assert fake.names().count("CreateDatasetVersion") == 0 and fake.names().count("upload-cancel") == 1
    assert (
        len(fake.datasets[DATASET]["versions"]) == 1 and len(fake.kernels[f"{USER}/guie-submission"]["versions"]) == 1
    )
    assert [b["cancelled"] for b in fake.blobs.values()] == [False, True]


def test_a_part_that_keeps_failing_gives_up_after_max_attempts(
    run_submit, fake, env_credentials, chunked, big_zip, tmp_path, console
):
    fake.fail("upload", 503, times=3, after=1)  # part 2, three times, and nothing of it arrives
    with pytest.raises(
        GuieError, match=r"part 262144-524287 failed 3 times in a row \(HTTP 503\).*no dataset version was created"
    ):
        run_submit(chunked, big_zip, tmp_path / "work", console)
    assert "CreateDataset" not in fake.names() and fake.datasets == {}
    assert fake.names().count("upload-cancel") == 1
    # the next run starts a fresh upload and succeeds
    run_submit(chunked, big_zip, tmp_path / "work", console)
    assert fake.names().count("StartBlobUpload") == 2
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": big_zip.read_bytes()}


def test_an_expired_upload_url_says_to_rerun(run_submit, fake, env_credentials, chunked, big_zip, tmp_path, console):
    fake.fail("upload", 410, message="gone", after=1)
    with pytest.raises(GuieError, match=r"upload URL expired \(HTTP 410\).*re-run `guie submit`"):
        run_submit(chunked, big_zip, tmp_path / "work", console)
    assert "CreateDataset" not in fake.names()


def test_upload_chunk_bytes_must_be_a_multiple_of_256_kib():
    adapter = TypeAdapter(KaggleParams)
    assert adapter.validate_python({"upload_chunk_bytes": 4 * CHUNK}).upload_chunk_bytes == 4 * CHUNK
    for bad in (1000, CHUNK + 1, 0):
        with pytest.raises(ValidationError, match="upload_chunk_bytes"):
            adapter.validate_python({"upload_chunk_bytes": bad})


def test_drops_that_still_move_the_upload_on_do_not_count_against_it(
    run_submit, fake, env_credentials, chunked, big_zip, tmp_path, console
):
    fake.break_upload(times=4)  # more drops than max_attempts, but half of every part gets through
    run_submit(chunked, big_zip, tmp_path / "work", console)
    assert fake.names().count("upload-query") == 4 and fake.names().count("StartBlobUpload") == 1
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": big_zip.read_bytes()}


def test_the_kaggle_clients_own_upload_is_one_unchunked_put(fake, env_credentials, params, big_zip, capfd):
    """Why guie uploads in parts itself: the client (kaggle 2.2.4) sends the whole file in one PUT,
    so a drop at 2.3 of 2.4 GB costs the whole upload. If this fails, the client learnt to chunk."""
    from kagglesdk.blobs.types.blob_api_service import ApiBlobType, ApiStartBlobUploadRequest

    from guie.kaggle.client import KaggleClient

    client = KaggleClient(params)
    request = ApiStartBlobUploadRequest()
    request.type, request.name, request.content_length = ApiBlobType.DATASET, big_zip.name, big_zip.stat().st_size
    with client.sdk() as kaggle:
        started = kaggle.blobs.blob_api_client.start_blob_upload(request)
    client.api.upload_complete(str(big_zip), started.create_url, quiet=True)
    [put] = [c for c in fake.calls if c.rpc == "upload"]
    assert put.body["bytes"] == big_zip.stat().st_size and put.body["range"] == ""
    capfd.readouterr()
