import csv
from pathlib import Path

import pytest
from support import tiny_params_dict

from guie.config import parse_params
from guie.data.manifest import build_manifest, read_manifest
from guie.data.sources import download_sources
from guie.errors import GuieError


@pytest.fixture
def project(tmp_path, tiny_params):
    download_sources(tiny_params, tmp_path / "data" / "raw")
    return tmp_path


def _manifest(params, root: Path):
    report = build_manifest(params, root, root / "data" / "manifest", workers=2)
    return report, read_manifest(root / "data" / "manifest" / "manifest.csv")


def test_every_image_is_listed_with_a_class_disjoint_split(project, tiny_params):
    report, rows = _manifest(tiny_params, project)
    assert report["images"] == 3 * 8 * 4 + 3 * 12 * 2
    assert {r.split for r in rows} == {"train", "heldout", "pca"}
    train = {r.label for r in rows if r.split == "train"}
    heldout = {r.label for r in rows if r.split == "heldout"}
    assert train and heldout and not train & heldout
    assert len(heldout) == round(24 * tiny_params.data.manifest.heldout_fraction)
    assert all((project / r.path).is_file() and r.width > 0 and len(r.sha256) == 64 for r in rows)
    assert {r.domain for r in rows} == {"apparel", "cars", "toys"}


def test_same_params_same_table_bytes(project, tiny_params):
    _manifest(tiny_params, project)
    first = (project / "data/manifest/manifest.csv").read_bytes()
    _manifest(tiny_params, project)
    assert (project / "data/manifest/manifest.csv").read_bytes() == first


def test_bad_files_are_rejected_with_a_reason_and_never_stop_the_stage(project, tiny_params):
    cls = next((project / "data/raw/synthetic/cars").iterdir())
    good = next(cls.iterdir()).read_bytes()
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "truncated.jpg").write_bytes(good[:200])
    (cls / "text.jpg").write_text("this is not an image")
    (cls / "copy.jpg").write_bytes(good)
    report, rows = _manifest(tiny_params, project)
    with (project / "data/manifest/rejected.csv").open() as f:
        rejected = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert rejected["empty.jpg"] == "empty file"
    assert rejected["truncated.jpg"].startswith("undecodable")
    assert rejected["text.jpg"].startswith("undecodable")
    assert rejected["copy.jpg"].startswith("duplicate of")
    assert report["duplicates"] == 1
    assert not any(Path(r.path).name in rejected for r in rows)


def test_class_caps(project):
    raw = tiny_params_dict()
    raw["data"]["manifest"].update(min_images_per_class=5, max_images_per_class=50)
    with pytest.raises(GuieError, match=r"data.sources\[synthetic\]: no usable images"):
        _manifest(parse_params(raw), project)  # every training class has 4 < 5 images
    raw["data"]["manifest"].update(min_images_per_class=1, max_images_per_class=2)
    _, rows = _manifest(parse_params(raw), project)
    per_class = {}
    for r in rows:
        if r.split != "pca":
            per_class[r.label] = per_class.get(r.label, 0) + 1
    assert set(per_class.values()) == {2}


def test_missing_download_names_the_stage_to_run(tmp_path, tiny_params):
    with pytest.raises(GuieError, match="run `dvc repro download`"):
        build_manifest(tiny_params, tmp_path, tmp_path / "out")
