"""`guie doctor`: every prerequisite the params need that this machine lacks, at once, offline."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from support import REPO
from typer.testing import CliRunner

from guie.cli import app
from guie.doctor import Gpu, diagnose, missing
from guie.layout import Layout
from guie.params.load import load_params

KAGGLE_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME")


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    """No Kaggle credentials (an empty HOME) and no network: a connection attempt fails the test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in KAGGLE_VARS:
        monkeypatch.delenv(name, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"guie doctor opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return home


def doctor(root: Path, params: Path):
    """`guie doctor` as typed, in this process (so the no-network guard holds)."""
    return CliRunner().invoke(app, ["doctor", "--params", str(params), "--root", str(root)])


def test_the_embedded_default_needs_nothing_more(tmp_path, offline_home):
    findings = diagnose(load_params(REPO / "params.yaml"), Layout(tmp_path), gpus=list)
    assert missing(findings) == [], findings
    items = {f.item for f in findings}
    assert {"kaggle credentials", "weights", "disk", "gpu", "data.sources[synthetic]"} <= items
    [creds] = [f for f in findings if f.item == "kaggle credentials"]
    assert creds.status == "unchecked" and "`guie submit` will need them" in creds.detail

    done = doctor(tmp_path, REPO / "params.yaml")
    assert done.exit_code == 0, done.output
    assert "nothing missing" in done.output


def test_the_full_recipe_lists_every_missing_prerequisite_at_once(tmp_path, offline_home):
    params = load_params(REPO / "params" / "full-recipe.yaml")
    findings = diagnose(params, Layout(tmp_path / "proj"), gpus=list, hub_client="hf", free_gib=50)
    gaps = {f.item: f for f in missing(findings)}
    assert set(gaps) == {
        "kaggle credentials",
        "data.sources[products10k]",
        "data.sources[stanford-online-products]",
        "weights",
        "disk",
        "gpu",
    }, findings
    assert "needed by gldv2" in gaps["kaggle credentials"].detail and "kaggle.json" in gaps["kaggle credentials"].detail
    assert "https://products-10k.github.io/" in gaps["data.sources[products10k]"].fix
    assert "https://cvgl.stanford.edu/" in gaps["data.sources[stanford-online-products]"].fix
    assert gaps["weights"].fix == (
        "on a machine with network: `hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K open_clip_pytorch_model.bin "
        f"--cache-dir {tmp_path / 'proj' / 'data' / 'weights' / 'hub'}`"
    )
    assert "50 GiB free" in gaps["disk"].detail and "needs ~201 GiB" in gaps["disk"].detail
    assert "train.device, pca.device, export.device: cuda" in gaps["gpu"].detail
    rules = {f.item: f for f in findings if f.item.startswith("rules of ")}
    assert rules["rules of landmark-recognition-2021"].status == "unchecked"
    assert "competitions/landmark-recognition-2021/rules" in rules["rules of landmark-recognition-2021"].fix
    assert "checked when it submits" in rules["rules of google-universal-image-embedding"].detail


def test_what_is_there_is_found(tmp_path, offline_home, monkeypatch):
    root = tmp_path / "proj"
    (root / "data" / "external" / "products10k").mkdir(parents=True)
    (root / "data" / "external" / "products10k" / "train.csv").write_text("name,class,group\n")
    (root / "data" / "external" / "Stanford_Online_Products").mkdir(parents=True)  # but no Ebay_train.txt
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k3y")
    params = load_params(REPO / "params" / "full-recipe.yaml")
    findings = diagnose(params, Layout(root), gpus=lambda: [Gpu("H100", 80.0)], hub_client=None, free_gib=1000)
    by_item = {f.item: f for f in findings}
    assert by_item["kaggle credentials"].status == "ok" and "alice" in by_item["kaggle credentials"].detail
    assert by_item["data.sources[products10k]"].status == "ok"
    sop = by_item["data.sources[stanford-online-products]"]
    assert sop.status == "missing" and "has no Ebay_train.txt" in sop.detail
    assert by_item["gpu"].status == "ok" and "H100 (80 GiB)" in by_item["gpu"].detail
    assert by_item["disk"].status == "ok"
    weights = by_item["weights"]  # no hub client installed: the library call does it
    assert "python -c 'from huggingface_hub import hf_hub_download;" in weights.fix and "pip install" in weights.fix
    assert [f.item for f in missing(findings)] == ["data.sources[stanford-online-products]", "weights"]


def test_guie_doctor_exits_non_zero_naming_each_missing_item(tmp_path, offline_home):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "params" / "full-recipe.yaml", root / "params.yaml")
    done = doctor(root, root / "params.yaml")
    assert done.exit_code == 1, done.output
    out = done.output
    for item in (
        "kaggle credentials",
        "data.sources[products10k]",
        "data.sources[stanford-online-products]",
        "weights",
    ):
        assert f"MISSING {item}: " in out, out
    assert "fix: get it from https://products-10k.github.io/" in out
    assert "download laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in out and "huggingface-cli" not in out
