"""`url` sources against a local HTTP server: verified, resumable, atomic, unpacked, listed."""

from __future__ import annotations

import hashlib
import io
import zipfile

import crafted
import pytest
from file_server import FileServer
from support import tiny_params_dict

import guie.data.fetch
from guie.data.manifest import read_manifest
from guie.errors import GuieError
from guie.layout import Layout
from guie.params.load import parse_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest


def _products_zip() -> bytes:
    """A Products-10K-style archive: shop/train.csv (name,class,group) + shop/train/*.jpg."""
    buf = io.BytesIO()
    rows = ["name,class,group"]
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in range(3):
            for i in range(4):
                name = f"{cls * 10 + i}.jpg"
                rows.append(f"{name},{cls},7")
                zf.writestr(
                    zipfile.ZipInfo(f"shop/train/{name}", (2015, 1, 1, 0, 0, 0)), crafted.jpeg(seed=cls * 10 + i)
                )
        zf.writestr(zipfile.ZipInfo("shop/train.csv", (2015, 1, 1, 0, 0, 0)), "\n".join(rows) + "\n")
    return buf.getvalue()


ARCHIVE = _products_zip()
SHA = hashlib.sha256(ARCHIVE).hexdigest()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(guie.data.fetch, "BACKOFF_S", 0.0)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    with FileServer({"files/shop.zip": ARCHIVE, "files/labels.csv": b"image_name,label\n"}) as s:
        yield s


def _source(url: str, sha256: str = SHA, **extra) -> dict:
    return {"name": "shop", "type": "url", "url": url, "sha256": sha256, "root": "shop", "csv": "train.csv",
            "image": "train/{name}", "label": "{class}", "domain": "packaged", **extra}  # fmt: skip


def _params(tmp_path, params_with, source: dict):
    crafted.write_class_folder(tmp_path / "pca", {"p": 3}, seed=5)
    return params_with([source, {"name": "pca", "type": "folder", "path": "pca", "domain": "meme", "role": "pca"}])


def test_an_archive_url_is_verified_unpacked_and_listed(tmp_path, params_with, server):
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/shop.zip"))
    counts = download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert counts["shop"] == 13  # 12 images + train.csv
    assert (tmp_path / "data/downloads/shop/shop.zip").read_bytes() == ARCHIVE  # the cache keeps it
    assert (tmp_path / "data/downloads/.gitignore").read_text().endswith("\n*\n")  # out of git
    report = build_manifest(
        params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).manifest, Layout(tmp_path).rejected, workers=1
    )
    rows = [r for r in read_manifest(tmp_path / "data/manifest/manifest.csv") if r.source == "shop"]
    assert report["by_source"]["shop"] == 12
    assert {r.label for r in rows} == {"shop/0", "shop/1", "shop/2"} and {r.domain for r in rows} == {"packaged"}
    assert all(r.path.startswith("data/raw/shop/shop/train/") for r in rows)

    download_sources(
        params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir
    )  # again: unpacked from the verified cache, no request
    assert len(server.requests) == 1


def test_a_cut_download_resumes_with_a_range_request(tmp_path, params_with, server):
    server.truncate = 1
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/shop.zip"))
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert [r.get("Range") for r in server.requests] == [None, f"bytes={len(ARCHIVE) // 2}-"]
    assert (tmp_path / "data/downloads/shop/shop.zip").read_bytes() == ARCHIVE


def test_a_download_that_keeps_failing_keeps_its_part_and_resumes_next_run(tmp_path, params_with, server):
    server.truncate = guie.data.fetch.ATTEMPTS
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/shop.zip"))
    with pytest.raises(GuieError, match=r"download failed after 4 tries .*re-run `guie download` to resume"):
        download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    cache = tmp_path / "data/downloads/shop"
    assert sorted(p.name for p in cache.iterdir()) == ["shop.zip.part"]  # never under the final name
    assert not (tmp_path / "data/raw/shop").exists()
    kept = (cache / "shop.zip.part").stat().st_size
    assert 0 < kept < len(ARCHIVE)

    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert server.requests[-1]["Range"] == f"bytes={kept}-"
    assert (cache / "shop.zip").read_bytes() == ARCHIVE


def test_a_checksum_mismatch_deletes_the_download(tmp_path, params_with, server):
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/shop.zip", sha256="0" * 64))
    with pytest.raises(
        GuieError, match=r"sha256 mismatch \(expected 0{64}, got " + SHA + r"\); the download was deleted"
    ):
        download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert list((tmp_path / "data/downloads/shop").iterdir()) == []
    assert not (tmp_path / "data/raw/shop").exists()


def test_a_server_without_ranges_restarts_cleanly(tmp_path, params_with, server):
    server.truncate, server.ranges = 1, False
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/shop.zip"))
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert (tmp_path / "data/downloads/shop/shop.zip").read_bytes() == ARCHIVE


def test_a_missing_file_is_one_clear_error(tmp_path, params_with, server):
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/nope.zip"))
    with pytest.raises(GuieError, match=r"nope.zip: the server answered HTTP 404 .*check the URL"):
        download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert len(server.requests) == 1  # a 404 is not retried


def test_a_single_file_url_is_placed_as_it_is(tmp_path, params_with, server):
    sha = hashlib.sha256(b"image_name,label\n").hexdigest()
    params = _params(tmp_path, params_with, _source(f"{server.url}/files/labels.csv", sha256=sha))
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert (tmp_path / "data/raw/shop/labels.csv").read_bytes() == b"image_name,label\n"


def test_a_file_url_is_read_in_place_and_checked(tmp_path, params_with):
    local = tmp_path / "elsewhere" / "shop.zip"
    local.parent.mkdir()
    local.write_bytes(ARCHIVE)
    params = _params(tmp_path, params_with, _source(local.as_uri()))
    assert download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)["shop"] == 13
    assert not (tmp_path / "data/downloads/shop").exists()  # no copy in the cache
    bad = _params(tmp_path, params_with, _source(local.as_uri(), sha256="f" * 64))
    with pytest.raises(GuieError, match="sha256 mismatch .*the file was left as it is"):
        download_sources(bad, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sha256": ""}, "sha256 is required for http"),
        ({"sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
        ({"url": "ftp://x/y.zip"}, "url must start with http://, https:// or file://"),
        ({"name": "../escape"}, "names the directory data/raw/<name>/"),
        ({"image": "{row.__class__}"}, "placeholders must be names like"),
    ],
)
def test_bad_url_source_params_name_the_field(change, message):
    raw = tiny_params_dict()
    raw["data"]["sources"][0] = {**_source("https://example.org/shop.zip"), **change}
    with pytest.raises(GuieError, match=r"data\.sources\.0") as err:
        parse_params(raw)
    assert message in str(err.value)
