"""Kaggle dataset and competition downloads through the real client against the fake Kaggle."""

from __future__ import annotations

import zipfile

import pytest
from fake_kaggle import KEY

from guie.errors import GuieError
from guie.kaggle.download import download_kaggle_competition, download_kaggle_dataset

DATASET = "rhtsingh/130k-images-512x512-universal-image-embeddings"
BIG = bytes(range(256)) * 12288  # 3 MiB: more than the client's 1 MiB read chunk
FILES = {"train.csv": b"label,image_name\napparel,a.jpg\n", "apparel/a.bin": BIG}


@pytest.fixture
def hosted(fake):
    fake.add_dataset(DATASET, FILES)
    fake.competitions["landmark-recognition-2021"] = {"train.csv": b"id,landmark_id\n1,7\n", "sample.csv": b"x\n"}
    fake.rules_accepted.add("landmark-recognition-2021")
    return fake


def test_whole_dataset_arrives_as_slug_zip(hosted, env_credentials, params, tmp_path):
    path = download_kaggle_dataset(DATASET, tmp_path / "raw", params=params)
    assert path == tmp_path / "raw" / "130k-images-512x512-universal-image-embeddings.zip"
    with zipfile.ZipFile(path) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == FILES
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [path.name]  # no .part or marker left


def test_one_dataset_file(hosted, env_credentials, params, tmp_path):
    path = download_kaggle_dataset(DATASET, tmp_path / "raw", "train.csv", params=params)
    assert path.name == "train.csv" and path.read_bytes() == FILES["train.csv"]
    assert hosted.bodies("DownloadDataset")[-1]["fileName"] == "train.csv"


def test_a_complete_file_is_not_written_again(hosted, env_credentials, params, tmp_path):
    first = download_kaggle_dataset(DATASET, tmp_path / "raw", "train.csv", params=params).stat()
    second = download_kaggle_dataset(DATASET, tmp_path / "raw", "train.csv", params=params).stat()
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_competition_data_whole_and_by_file(hosted, env_credentials, params, tmp_path):
    [whole] = download_kaggle_competition("landmark-recognition-2021", tmp_path / "all", params=params)
    assert whole.name == "landmark-recognition-2021.zip"
    with zipfile.ZipFile(whole) as zf:
        assert sorted(zf.namelist()) == ["sample.csv", "train.csv"]
    paths = download_kaggle_competition("landmark-recognition-2021", tmp_path / "some", ["train.csv"], params=params)
    assert [p.read_bytes() for p in paths] == [b"id,landmark_id\n1,7\n"]


def test_truncated_download_resumes_from_the_partial_file(hosted, env_credentials, params, tmp_path):
    hosted.truncate(times=1)  # sends half the bytes, then hangs up
    path = download_kaggle_dataset(DATASET, tmp_path / "raw", "apparel/a.bin", params=params)
    assert path.read_bytes() == BIG
    ranges = [c.headers.get("Range") for c in hosted.calls if c.rpc == "file"]
    assert ranges[-1] == "bytes=1048576-"  # the one whole chunk that reached the disk was kept


def test_missing_dataset_is_a_404_message(hosted, env_credentials, params, tmp_path):
    with pytest.raises(GuieError, match=r"download kaggle dataset nobody/nothing-here: not found \(HTTP 404"):
        download_kaggle_dataset("nobody/nothing-here", tmp_path / "raw", params=params)
    assert not list((tmp_path / "raw").iterdir())


def test_competition_rules_not_accepted_is_a_403_with_the_rules_url(hosted, env_credentials, params, tmp_path):
    hosted.rules_accepted.clear()
    with pytest.raises(
        GuieError,
        match=r"accept the competition rules at https://www.kaggle.com/competitions/landmark-recognition-2021/rules",
    ):
        download_kaggle_competition("landmark-recognition-2021", tmp_path, params=params)


def test_bad_key_is_a_401_message_without_the_key(hosted, monkeypatch, params, tmp_path):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", KEY + "-wrong")
    with pytest.raises(GuieError, match="rejected the credentials") as err:
        download_kaggle_dataset(DATASET, tmp_path, params=params)
    assert KEY not in str(err.value)


def test_missing_credentials_is_one_clear_message(hosted, params, tmp_path):
    with pytest.raises(GuieError, match="no Kaggle credentials"):
        download_kaggle_dataset(DATASET, tmp_path, params=params)
    assert hosted.calls == []


@pytest.mark.parametrize("ref", ["no-owner", "a/b/c", "/slug"])
def test_malformed_dataset_names_are_refused(ref, tmp_path):
    with pytest.raises(GuieError, match="expected owner/slug"):
        download_kaggle_dataset(ref, tmp_path)


def test_an_encoded_path_in_the_file_url_stays_inside_dest(hosted, env_credentials, params, tmp_path):
    hosted.datasets[DATASET]["versions"][-1]["files"]["..%2F..%2Fevil.txt"] = b"x"
    path = download_kaggle_dataset(DATASET, tmp_path / "raw", "..%2F..%2Fevil.txt", params=params)
    assert path == tmp_path / "raw" / "evil.txt" and path.read_bytes() == b"x"
