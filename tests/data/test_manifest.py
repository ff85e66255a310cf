import csv
from collections import Counter
from pathlib import Path

import crafted
import pytest
from support import tiny_params_dict

from guie.data.manifest import read_manifest
from guie.errors import GuieError
from guie.layout import Layout
from guie.params.load import parse_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest


@pytest.fixture
def project(tmp_path, tiny_params):
    download_sources(tiny_params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    return tmp_path


def _manifest(params, root: Path):
    report = build_manifest(params, root, Layout(root).raw, Layout(root).manifest, Layout(root).rejected, workers=2)
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
    assert rejected["text.jpg"].startswith("not an image")
    assert rejected["copy.jpg"].startswith("duplicate: same bytes as data/raw/synthetic/cars/")
    assert report["duplicates"] == 1
    assert not any(Path(r.path).name in rejected for r in rows)


def test_class_caps_are_per_source(project):
    raw = tiny_params_dict()
    raw["data"]["sources"][0].update(min_images_per_class=5)
    with pytest.raises(GuieError, match=r"data.sources\[synthetic\]: no usable images \(96 rare class\)"):
        _manifest(parse_params(raw), project)  # every training class has 4 < 5 images
    raw["data"]["sources"][0].update(min_images_per_class=1, max_images_per_class=2)
    report, rows = _manifest(parse_params(raw), project)
    per_class = Counter(r.label for r in rows if r.split != "pca")
    assert set(per_class.values()) == {2} and len(per_class) == 24
    assert sum(1 for r in rows if r.split == "pca") == 3 * 12 * 2  # a PCA set is used whole
    assert report["left_out_by_caps"] == 24 * 2


def test_max_classes_draws_a_seeded_subset(project):
    raw = tiny_params_dict()
    raw["data"]["sources"][0].update(max_classes=10)
    labels = []
    for class_seed in (0, 0, 1):
        raw["data"]["sources"][0]["class_seed"] = class_seed
        report, rows = _manifest(parse_params(raw), project)
        labels.append({r.label for r in rows if r.source == "synthetic"})
        assert report["left_out_by_caps"] == 14 * 4
    assert len(labels[0]) == 10 and labels[0] == labels[1] and labels[0] != labels[2]


def test_only_a_window_of_a_big_class_is_decoded_and_the_cap_is_kept(tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "big", {"x": 30, "y": 3}, seed=1)
    crafted.write_class_folder(tmp_path / "p", {"p": 3}, seed=2)
    params = params_with(
        [
            {"name": "big", "type": "folder", "path": "big", "domain": "toys", "max_images_per_class": 5},
            {"name": "p", "type": "folder", "path": "p", "domain": "meme", "role": "pca"},
        ]
    )
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    report, rows = _manifest(params, tmp_path)
    assert Counter(r.label for r in rows if r.source == "big") == {"big/x": 5, "big/y": 3}
    assert report["left_out_by_caps"] == 25 and report["rejected"] == 0


def test_each_train_source_holds_out_its_share_of_classes(tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "a", {f"a{i}": 3 for i in range(10)}, seed=1)
    crafted.write_class_folder(tmp_path / "b", {f"b{i}": 3 for i in range(4)}, seed=2)
    crafted.write_class_folder(tmp_path / "p", {"p": 3}, seed=3)
    params = params_with(
        [
            {"name": "a", "type": "folder", "path": "a", "domain": "toys"},
            {"name": "b", "type": "folder", "path": "b", "domain": "cars"},
            {"name": "p", "type": "folder", "path": "p", "domain": "meme", "role": "pca"},
        ],
        heldout_fraction=0.5,
    )
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    _, rows = _manifest(params, tmp_path)
    heldout = {(r.source, r.label) for r in rows if r.split == "heldout"}
    assert Counter(source for source, _ in heldout) == {"a": 5, "b": 2}
    assert not {r.label for r in rows if r.split == "train"} & {label for _, label in heldout}


def test_exact_duplicates_across_sources_are_kept_once(tmp_path, params_with):
    first = crafted.write_class_folder(tmp_path / "one", {"x": 3, "y": 3}, seed=1)
    crafted.write_class_folder(tmp_path / "two", {"z": 3}, seed=2)
    (tmp_path / "two/z/copy.jpg").write_bytes(first[0].read_bytes())
    params = params_with(
        [
            {"name": "one", "type": "folder", "path": "one", "domain": "toys"},
            {"name": "two", "type": "folder", "path": "two", "domain": "toys", "role": "pca"},
        ]
    )
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    report, rows = _manifest(params, tmp_path)
    assert report["duplicates"] == 1 and report["by_source"] == {"one": 6, "two": 3}
    with (tmp_path / "data/manifest/rejected.csv").open() as f:
        assert [r["reason"] for r in csv.DictReader(f)] == ["duplicate: same bytes as one/x/0.jpg"]


def test_a_source_with_nothing_usable_is_an_error_naming_it(tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "good", {"x": 3}, seed=1)
    (tmp_path / "broken/x").mkdir(parents=True)
    for i in range(3):
        (tmp_path / f"broken/x/{i}.jpg").write_bytes(b"")
    params = params_with(
        [
            {"name": "good", "type": "folder", "path": "good", "domain": "toys"},
            {"name": "broken", "type": "folder", "path": "broken", "domain": "toys", "role": "pca"},
        ]
    )
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    with pytest.raises(
        GuieError, match=r"data.sources\[broken\]: no usable images \(3 empty file\); see .*rejected.csv"
    ):
        _manifest(params, tmp_path)
    assert len((tmp_path / "data/manifest/rejected.csv").read_text().splitlines()) == 4  # written for the user to read


def test_missing_download_names_the_stage_to_run(tmp_path, tiny_params):
    with pytest.raises(GuieError, match="run `dvc repro download`"):
        build_manifest(
            tiny_params,
            tmp_path,
            Layout(tmp_path).raw,
            tmp_path / "out" / "manifest.csv",
            tmp_path / "out" / "rejected.csv",
        )
