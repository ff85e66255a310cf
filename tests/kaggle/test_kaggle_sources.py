"""`kaggle_dataset` and `kaggle_competition` sources through the real client and the fake Kaggle:
downloaded, unpacked, listed; each failure one clear message that never shows the key."""

from __future__ import annotations

import io
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from fake_kaggle import KEY
from PIL import Image
from support import tiny_params_dict

from guie.data.manifest import read_manifest
from guie.errors import GuieError
from guie.layout import Layout
from guie.params.load import parse_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest

DATASET = "rhtsingh/130k-images-512x512-universal-image-embeddings"
COMPETITION = "landmark-recognition-2021"


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


FILES_130K = {
    f"{d}/{d}_{i}.jpg": _jpeg(10 * k + i) for k, d in enumerate(["apparel", "cars", "toys"]) for i in range(3)
}
FILES_130K["train.csv"] = (
    "label,image_name\n" + "".join(f"{p.split('/')[0]},{p.split('/')[1]}\n" for p in FILES_130K)
).encode()
GLD_IDS = {"a1b2c3d4": 7, "a1b2ffff": 7, "a1c0ffee": 7, "b0b0b0b0": 9, "b0b1b2b3": 9, "b0b2b2b3": 9}
FILES_GLD = {f"train/{i[0]}/{i[1]}/{i[2]}/{i}.jpg": _jpeg(100 + k) for k, i in enumerate(GLD_IDS)}
FILES_GLD["train.csv"] = ("id,landmark_id\n" + "".join(f"{i},{lm}\n" for i, lm in GLD_IDS.items())).encode()


@pytest.fixture
def hosted(fake):
    fake.add_dataset(DATASET, FILES_130K)
    fake.competitions[COMPETITION] = FILES_GLD
    fake.rules_accepted.add(COMPETITION)
    return fake


def _params(kaggle_params, sources: list[dict]):
    raw = tiny_params_dict()
    raw["data"]["sources"] = sources
    raw["kaggle"] = asdict(kaggle_params)
    return parse_params(raw)


def _run(tmp_path: Path, params) -> list:
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    build_manifest(
        params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).manifest, Layout(tmp_path).rejected, workers=1
    )
    return read_manifest(tmp_path / "data/manifest/manifest.csv")


def test_the_130k_preset_and_gldv2_download_unpack_and_list(hosted, env_credentials, params, tmp_path, capsys):
    rows = _run(tmp_path, _params(params, [{"preset": "gldv2"}, {"preset": "guie-130k"}]))
    pca = [r for r in rows if r.source == "guie-130k"]
    assert (
        {r.domain for r in pca} == {"apparel", "cars", "toys"} and {r.split for r in pca} == {"pca"} and len(pca) == 9
    )
    gld = [r for r in rows if r.source == "gldv2"]
    assert {r.label for r in gld} == {"gldv2/7", "gldv2/9"} and all(r.domain == "landmark" for r in gld)
    assert (tmp_path / "data/downloads/gldv2/landmark-recognition-2021.zip").is_file()  # kept for re-runs
    out = capsys.readouterr()
    assert "licence and terms: Kaggle competition data: accept the competition's rules" in out.err
    assert KEY not in out.out + out.err


def test_competition_files_are_fetched_one_by_one(hosted, env_credentials, params, tmp_path):
    source = {
        "name": "gld",
        "type": "kaggle_competition",
        "competition": COMPETITION,
        "files": ["train.csv"],
        "domain": "landmark",
    }
    params_ = _params(params, [source, {"preset": "guie-130k"}])
    assert download_sources(params_, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)["gld"] == 1
    assert (tmp_path / "data/raw/gld/train.csv").read_bytes() == FILES_GLD["train.csv"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "case, message",
    [
        ("no credentials", r"no Kaggle credentials"),
        ("wrong key", r"Kaggle rejected the credentials .*\(HTTP 401\)"),
        (
            "rules not accepted",
            rf"accept the competition rules at https://www.kaggle.com/competitions/{COMPETITION}/rules",
        ),
        ("unknown dataset", r"download kaggle dataset nobody/nothing-here: not found \(HTTP 404"),
        ("network down", r"could not reach Kaggle at http://127.0.0.1:\d+ after 3 tries .*check your network"),
    ],
)
def test_each_kaggle_failure_is_one_clear_message_without_the_key(
    case, message, hosted, params, tmp_path, monkeypatch, capsys
):
    if case != "no credentials":
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", KEY + "-wrong" if case == "wrong key" else KEY)
    if case == "rules not accepted":
        hosted.rules_accepted.clear()
    if case == "network down":
        monkeypatch.setenv("GUIE_KAGGLE_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    first = {"preset": "gldv2"}
    if case == "unknown dataset":
        first = {"name": "nothing", "type": "kaggle_dataset", "dataset": "nobody/nothing-here", "domain": "toys"}
    params_ = _params(params, [first, {"preset": "guie-130k"}])
    with pytest.raises(GuieError, match=message) as err:
        download_sources(params_, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    out = capsys.readouterr()
    assert KEY not in str(err.value) + out.out + out.err
    assert list((tmp_path / "data/raw").iterdir()) == []  # no source dir, no staging dir
