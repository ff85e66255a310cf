"""`folder` sources and image layouts: classes from folders or a CSV, domains fixed or derived,
images read in place."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import crafted
import pytest

from guie.data.manifest import read_manifest
from guie.data.presets import PRESETS
from guie.errors import GuieError
from guie.layout import Layout
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest

DOMAINS_130K = ("apparel", "cars", "landmark")


def _run(tmp_path: Path, params) -> tuple[dict, list]:
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    report = build_manifest(
        params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).manifest, Layout(tmp_path).rejected, workers=1
    )
    return report, read_manifest(tmp_path / "data/manifest/manifest.csv")


def _rejected(tmp_path: Path) -> dict[str, str]:
    with (tmp_path / "data/manifest/rejected.csv").open(newline="") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def _train_folder(tmp_path: Path) -> dict:
    crafted.write_class_folder(tmp_path / "products", {"p1": 3, "p2": 4, "p3": 3}, seed=1)
    return {"name": "products", "type": "folder", "path": "products", "domain": "packaged"}


def _layout_130k(root: Path) -> list[tuple[str, str]]:
    """The public 130k set: one folder per domain plus train.csv (label,image_name)."""
    rows = []
    for d, domain in enumerate(DOMAINS_130K):
        for i in range(3):
            name = f"{domain}_{i}.jpg"
            (root / domain).mkdir(parents=True, exist_ok=True)
            (root / domain / name).write_bytes(crafted.jpeg(seed=500 + d * 10 + i))
            rows.append((domain, name))
    (root / "train.csv").write_text("label,image_name\n" + "".join(f"{d},{n}\n" for d, n in rows))
    return rows


def test_folder_classes_come_from_subdirectories_and_nothing_is_copied(tmp_path, params_with):
    outside = tmp_path / "elsewhere"
    _layout_130k(outside / "130k")
    params = params_with(
        [
            _train_folder(tmp_path),
            {"name": "pca130k", "type": "folder", "path": str(outside / "130k"), "domain": "{parent}", "role": "pca"},
        ]
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "products").symlink_to(tmp_path / "products")  # a folder inside the project (through a link)
    report, rows = _run(project, params)
    assert sorted(p.name for p in (project / "data/raw/pca130k").iterdir()) == ["folder.json"]  # no copies
    train = [r for r in rows if r.source == "products"]
    assert {r.label for r in train} == {"products/p1", "products/p2", "products/p3"}
    assert all(r.path.startswith("products/p") for r in train)  # relative to the project root
    pca = [r for r in rows if r.source == "pca130k"]
    assert {r.domain for r in pca} == set(DOMAINS_130K) and {r.split for r in pca} == {"pca"}
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in pca)  # outside: absolute
    assert report["by_source"] == {"products": 10, "pca130k": 9}


def test_the_130k_csv_layout_gives_the_same_rows_as_its_folders(tmp_path, params_with):
    _layout_130k(tmp_path / "130k")
    base = {"name": "pca130k", "type": "folder", "path": "130k", "role": "pca"}
    by_folder = params_with([_train_folder(tmp_path), {**base, "domain": "{parent}"}])
    by_csv = params_with(
        [_train_folder(tmp_path), {**base, "csv": "train.csv", "image": "{label}/{image_name}", "domain": "{label}"}]
    )
    _, rows_folder = _run(tmp_path, by_folder)
    _, rows_csv = _run(tmp_path, by_csv)
    key = lambda rows: sorted((r.path, r.domain, r.sha256) for r in rows if r.source == "pca130k")  # noqa: E731
    assert key(rows_folder) == key(rows_csv) and len(key(rows_csv)) == 9


def test_the_gldv2_layout_from_its_preset_templates(tmp_path, params_with):
    gld = tmp_path / "gld"
    ids = {"a1b2c3d4": 7, "a1b2ffff": 7, "a1c0ffee": 7, "b0b0b0b0": 9, "b0b1b2b3": 9, "b0b2b2b3": 9}
    for k, image_id in enumerate(ids):
        path = gld / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(crafted.jpeg(seed=900 + k))
    (gld / "train.csv").write_text("id,landmark_id\n" + "".join(f"{i},{lm}\n" for i, lm in ids.items()))
    layout = {k: PRESETS["gldv2"][k] for k in ("csv", "image", "label", "domain")}
    params = params_with(
        [{"name": "gld", "type": "folder", "path": "gld", **layout}, {**_train_folder(tmp_path), "role": "pca"}]
    )
    _, rows = _run(tmp_path, params)
    gld_rows = [r for r in rows if r.source == "gld"]
    assert {r.label for r in gld_rows} == {"gld/7", "gld/9"} and {r.domain for r in gld_rows} == {"landmark"}
    assert "gld/train/a/1/b/a1b2c3d4.jpg" in {r.path for r in gld_rows}


def test_csv_problems_are_rejected_per_row(tmp_path, params_with):
    shop = tmp_path / "shop"
    crafted.write_class_folder(shop / "train", {"x": 5}, seed=3)
    (shop / "train.csv").write_text(
        "name,class,category\n"
        "x/0.jpg,1,packaged\nx/1.jpg,1,packaged\nx/2.jpg,1,toys\n"
        "x/3.jpg,1,toys\n"
        "x/0.jpg,2,packaged\n"  # listed twice
        "x/404.jpg,1,toys\n"  # not on disk
        "../../etc/passwd,1,toys\n"  # leaves the root
        "x/4.jpg\n"  # short row: no class
    )
    source = {"name": "shop", "type": "folder", "path": "shop", "csv": "train.csv", "image": "train/{name}",
              "label": "{class}", "domain": "{category}"}  # fmt: skip
    params = params_with([source, {**_train_folder(tmp_path), "role": "pca"}])
    _, rows = _run(tmp_path, params)
    shop_rows = {Path(r.path).name: r for r in rows if r.source == "shop"}
    assert {n: r.domain for n, r in shop_rows.items()} == {
        "0.jpg": "packaged",
        "1.jpg": "packaged",
        "2.jpg": "toys",
        "3.jpg": "toys",
    }
    reasons = {p: r.split(":")[0] for p, r in _rejected(tmp_path).items()}
    assert reasons == {
        "shop/train/x/0.jpg": "listed twice",
        "shop/train/x/404.jpg": "missing",
        "shop/train.csv:8": "bad row",
        "shop/train/x/4.jpg": "no class",
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"label": "{klass}"},
            r"data.sources\[shop\].label: \{klass\} is not a path field .* nor a column of .*train.csv",
        ),
        ({"csv": "labels.csv"}, r"data.sources\[shop\].csv: .*labels.csv not found"),
        (
            {"root": "inner"},
            r"data.sources\[shop\].root: .*inner not found; the source's top level holds \['train', 'train.csv'\]",
        ),
    ],
)
def test_layout_mistakes_are_errors_naming_the_field(change, message, tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "shop" / "train", {"x": 3}, seed=3)
    (tmp_path / "shop/train.csv").write_text("name,class\nx/0.jpg,1\n")
    source = {"name": "shop", "type": "folder", "path": "shop", "csv": "train.csv", "image": "train/{name}",
              "label": "{class}", "domain": "toys", **change}  # fmt: skip
    params = params_with([source, {**_train_folder(tmp_path), "role": "pca"}])
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    with pytest.raises(GuieError, match=message):
        build_manifest(
            params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).manifest, Layout(tmp_path).rejected, workers=1
        )


def test_a_missing_folder_says_where_to_get_the_data(tmp_path, params_with):
    params = params_with([{"preset": "products10k"}, {**_train_folder(tmp_path), "role": "pca"}])
    with pytest.raises(
        GuieError,
        match=r"data.sources\[products10k\].path: .*data/external/products10k is not a directory; get it from https://products-10k.github.io/",
    ):
        download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)


def test_the_folder_record_changes_when_the_folder_does(tmp_path, params_with):
    params = params_with([_train_folder(tmp_path), {**_train_folder(tmp_path), "name": "again", "role": "pca"}])
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    record = tmp_path / "data/raw/products/folder.json"
    first = json.loads(record.read_text())
    assert first["files"] == 10 and first["path"] == str(tmp_path / "products")
    (tmp_path / "products/p1/extra.jpg").write_bytes(crafted.jpeg(seed=77))
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    assert json.loads(record.read_text())["listing_sha256"] != first["listing_sha256"]  # so DVC re-runs the manifest


def test_gif_and_tiff_are_taken_and_other_formats_pillow_knows_are_listed_as_rejected(tmp_path, params_with):
    from PIL import Image

    train = _train_folder(tmp_path)
    folder = tmp_path / "products"
    _layout_130k(tmp_path / "130k")
    frames = [Image.new("RGB", (40, 36), c) for c in ("red", "blue")]
    frames[0].save(folder / "p1" / "anim.gif", save_all=True, append_images=frames[1:])  # the first frame counts
    Image.new("RGB", (50, 40), "green").save(folder / "p2" / "scan.tif")
    (folder / "p2" / "layers.psd").write_bytes(b"8BPS not decoded")
    (folder / "p2" / "notes.txt").write_text("not an image format at all")
    params = params_with(
        [train, {"name": "pca", "type": "folder", "path": "130k", "domain": "{parent}", "role": "pca"}]
    )
    _, rows = _run(tmp_path, params)
    sizes = {Path(r.path).name: (r.width, r.height) for r in rows}
    assert sizes["anim.gif"] == (40, 36) and sizes["scan.tif"] == (50, 40)
    reasons = _rejected(tmp_path)
    assert reasons["products/p2/layers.psd"].startswith("unsupported format: .psd (guie takes .apng, .bmp")
    assert not any("notes.txt" in path for path in reasons)  # not an image format: not a candidate
