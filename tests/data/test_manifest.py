import csv
import dataclasses
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


# --- held-out cap and selection split (data.manifest.heldout_max_classes, selection_*) ---


def _legacy_splits(params, rows) -> dict[str, str]:
    """The split rule before the caps and the selection split existed (the golden reference):
    one seeded shuffle per train source, the first round(n * heldout_fraction) classes held out."""
    import random

    rng = random.Random(params.seed)
    splits = {}
    for source in params.data.sources:
        labels = sorted({r.label for r in rows if r.source == source.name})
        if source.role == "pca":
            splits.update({label: "pca" for label in labels})
            continue
        rng.shuffle(labels)
        n = round(len(labels) * params.data.manifest.heldout_fraction)
        splits.update({label: "heldout" if i < n else "train" for i, label in enumerate(labels)})
    return splits


def _classes(rows, split: str) -> dict[str, set[str]]:
    """source -> its classes in `split`."""
    out: dict[str, set[str]] = {}
    for r in rows:
        if r.split == split:
            out.setdefault(r.source, set()).add(r.label)
    return out


@pytest.fixture
def two_sources(tmp_path, params_with):
    """Train sources a (40 classes) and b (20 classes), 3 images each, and a PCA set;
    build(seed=..., **manifest) -> (report, rows)."""
    crafted.write_class_folder(tmp_path / "a", {f"a{i:02d}": 3 for i in range(40)}, seed=1)
    crafted.write_class_folder(tmp_path / "b", {f"b{i:02d}": 3 for i in range(20)}, seed=2)
    crafted.write_class_folder(tmp_path / "p", {"p": 3}, seed=3)
    sources = [
        {"name": "a", "type": "folder", "path": "a", "domain": "toys"},
        {"name": "b", "type": "folder", "path": "b", "domain": "cars"},
        {"name": "p", "type": "folder", "path": "p", "domain": "meme", "role": "pca"},
    ]

    def build(seed: int | None = None, **manifest):
        params = params_with(sources, **manifest)
        if seed is not None:
            params = dataclasses.replace(params, seed=seed)
        build.params = params
        download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
        return _manifest(params, tmp_path)

    return build


def test_the_default_knobs_leave_the_manifest_byte_identical_to_the_uncapped_rule(project, tiny_params):
    _, rows = _manifest(tiny_params, project)
    assert {r.label: r.split for r in rows} == _legacy_splits(tiny_params, rows)
    default = (project / "data/manifest/manifest.csv").read_bytes()
    raw = tiny_params_dict()
    # written out at their defaults, or a cap above the held-out count: the same bytes
    for knobs in (
        {"heldout_max_classes": 0, "selection_fraction": 0.0, "selection_max_classes": 0},
        {"heldout_max_classes": 10_000, "selection_max_classes": 10_000},
    ):
        raw["data"]["manifest"].update(knobs)
        report, _ = _manifest(parse_params(raw), project)
        assert (project / "data/manifest/manifest.csv").read_bytes() == default, knobs
        assert "selection_classes" not in report and "selection" not in report["by_split"]


def test_the_uncapped_split_of_two_sources_is_the_legacy_one(two_sources):
    for manifest in ({"heldout_fraction": 0.5}, {"heldout_fraction": 0.3, "heldout_max_classes": 18}):
        _, rows = two_sources(**manifest)
        assert {r.label: r.split for r in rows} == _legacy_splits(two_sources.params, rows), manifest


def test_heldout_max_classes_caps_the_held_out_classes_in_proportion_across_sources(two_sources):
    _, uncapped = two_sources(heldout_fraction=0.5)
    full = _classes(uncapped, "heldout")
    assert {s: len(c) for s, c in full.items()} == {"a": 20, "b": 10}
    # cap 9 of 30: 9 * 20 / 30 = 6 and 9 * 10 / 30 = 3, exact
    # cap 10 of 30: 6.67 and 3.33 -> floors 6 + 3, the one class left goes to the larger remainder (a)
    for cap, expected in ((9, {"a": 6, "b": 3}), (10, {"a": 7, "b": 3}), (1, {"a": 1})):
        report, rows = two_sources(heldout_fraction=0.5, heldout_max_classes=cap)
        heldout = _classes(rows, "heldout")
        assert {s: len(c) for s, c in heldout.items()} == expected, cap
        assert all(heldout[s] <= full[s] for s in heldout)  # a subset of the uncapped choice
        # the classes not held out train: the cap gives them back to training
        assert len({r.label for r in rows if r.split == "train"}) == 60 - cap
        assert report["by_split"]["heldout"] == 3 * cap


def test_the_capped_split_is_deterministic_and_follows_the_seed(two_sources, tmp_path):
    two_sources(heldout_fraction=0.3, heldout_max_classes=7)
    first = (tmp_path / "data/manifest/manifest.csv").read_bytes()
    _, rows = two_sources(heldout_fraction=0.3, heldout_max_classes=7)
    assert (tmp_path / "data/manifest/manifest.csv").read_bytes() == first
    _, other = two_sources(seed=12345, heldout_fraction=0.3, heldout_max_classes=7)
    assert {s: len(c) for s, c in _classes(other, "heldout").items()} == {"a": 5, "b": 2}  # 12 and 6 of 18, 7 kept
    assert _classes(other, "heldout") != _classes(rows, "heldout")


def test_the_selection_split_is_class_disjoint_seeded_and_sized_by_its_fraction(two_sources, tmp_path):
    _, plain = two_sources(heldout_fraction=0.3)
    report, rows = two_sources(heldout_fraction=0.3, selection_fraction=0.25)
    train, heldout, selection = ({r.label for r in rows if r.split == s} for s in ("train", "heldout", "selection"))
    assert {s: len(c) for s, c in _classes(rows, "selection").items()} == {"a": 10, "b": 5}
    assert {s: len(c) for s, c in _classes(rows, "heldout").items()} == {"a": 12, "b": 6}
    assert not train & heldout and not train & selection and not heldout & selection
    assert len(train | heldout | selection) == 60
    # drawn from the classes not held out: the held-out set is the one without a selection split
    assert heldout == {r.label for r in plain if r.split == "heldout"}
    assert report["selection_classes"] == 15 and report["selection_images"] == 45
    assert report["by_split"] == {"heldout": 54, "pca": 3, "selection": 45, "train": 81}
    # seeded: the same params give the same bytes, another seed other classes
    first = (tmp_path / "data/manifest/manifest.csv").read_bytes()
    two_sources(heldout_fraction=0.3, selection_fraction=0.25)
    assert (tmp_path / "data/manifest/manifest.csv").read_bytes() == first
    _, other = two_sources(seed=99, heldout_fraction=0.3, selection_fraction=0.25)
    assert {r.label for r in other if r.split == "selection"} != selection


def test_selection_max_classes_caps_selection_in_proportion_and_never_moves_heldout(two_sources):
    _, full = two_sources(heldout_fraction=0.3, selection_fraction=0.25)
    uncapped = _classes(full, "selection")
    # 6 of 15: 6 * 10 / 15 = 4 and 6 * 5 / 15 = 2
    _, rows = two_sources(heldout_fraction=0.3, selection_fraction=0.25, selection_max_classes=6)
    selection = _classes(rows, "selection")
    assert {s: len(c) for s, c in selection.items()} == {"a": 4, "b": 2}
    assert all(selection[s] <= uncapped[s] for s in selection)
    assert _classes(rows, "heldout") == _classes(full, "heldout")
    # both caps at once: each takes its own share, neither moves the other's classes
    _, both = two_sources(heldout_fraction=0.3, heldout_max_classes=3, selection_fraction=0.25, selection_max_classes=6)
    assert _classes(both, "selection") == selection
    assert {s: len(c) for s, c in _classes(both, "heldout").items()} == {"a": 2, "b": 1}
    assert len({r.label for r in both if r.split == "train"}) == 60 - 3 - 6


@pytest.mark.parametrize(
    "manifest",
    [
        {"heldout_fraction": 0.3, "selection_fraction": 0.25},
        {"heldout_fraction": 0.5, "heldout_max_classes": 4, "selection_fraction": 0.4, "selection_max_classes": 5},
        {"heldout_fraction": 0.0, "selection_fraction": 0.5},
    ],
)
def test_training_rows_never_hold_a_selection_or_heldout_class(two_sources, manifest):
    from guie.training.loader import split_rows

    _, rows = two_sources(**manifest)
    train, heldout = split_rows(rows)
    kept_out = {r.label for r in rows if r.split in ("heldout", "selection")}
    assert any(r.split == "selection" for r in rows)
    assert train and all(r.split == "train" for r in train)
    assert not {r.label for r in train} & kept_out
    assert {r.label for r in heldout}.isdisjoint(r.label for r in rows if r.split == "selection")


@pytest.mark.parametrize(("heldout", "selection"), [(0.6, 0.4), (0.5, 0.7), (0.0, 0.99)])
def test_fractions_that_leave_nothing_to_train_are_refused_naming_both_keys(heldout, selection):
    raw = tiny_params_dict()
    raw["data"]["manifest"].update(heldout_fraction=heldout, selection_fraction=selection)
    if heldout + selection < 1:
        parse_params(raw)  # 0.99 alone is allowed: each fraction is in [0, 1)
        return
    with pytest.raises(GuieError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"data.manifest: heldout_fraction ({heldout:g}) + selection_fraction ({selection:g}) must be < 1" in message


@pytest.mark.parametrize("key", ["heldout_max_classes", "selection_max_classes"])
def test_negative_caps_are_refused(key):
    raw = tiny_params_dict()
    raw["data"]["manifest"][key] = -1
    with pytest.raises(GuieError, match=rf"data.manifest.{key}: must be >= 0 \(got -1\)"):
        parse_params(raw)


def test_a_source_left_with_no_training_class_is_refused_naming_it(tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "a", {f"a{i}": 3 for i in range(10)}, seed=1)
    crafted.write_class_folder(tmp_path / "b", {"b0": 3, "b1": 3}, seed=2)
    crafted.write_class_folder(tmp_path / "p", {"p": 3}, seed=3)
    sources = [
        {"name": "a", "type": "folder", "path": "a", "domain": "toys"},
        {"name": "b", "type": "folder", "path": "b", "domain": "cars"},
        {"name": "p", "type": "folder", "path": "p", "domain": "meme", "role": "pca"},
    ]
    # b: round(2 * 0.3) = 1 held out and 1 for selection, none left to train
    params = params_with(sources, heldout_fraction=0.3, selection_fraction=0.3)
    download_sources(params, tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir)
    with pytest.raises(
        GuieError,
        match=r"data.sources\[b\]: its 2 classes leave no training class: 1 held out "
        r"\(data.manifest.heldout_fraction 0.3\) and 1 for selection \(data.manifest.selection_fraction 0.3\)",
    ):
        _manifest(params, tmp_path)
    assert not (tmp_path / "data/manifest/manifest.csv").exists()
    # a cap of 1 selection class: a's share (1 * 3 / 4) has the larger remainder, b keeps one class to train
    capped = params_with(sources, heldout_fraction=0.3, selection_fraction=0.3, selection_max_classes=1)
    _, rows = _manifest(capped, tmp_path)
    assert _classes(rows, "train")["b"] and "b" not in _classes(rows, "selection")


def test_proportional_shares_round_by_largest_remainder():
    from guie.stages.manifest import _proportional

    assert _proportional({"a": 20, "b": 10}, 0) == {"a": 20, "b": 10}  # 0: no cap
    assert _proportional({"a": 20, "b": 10}, 30) == {"a": 20, "b": 10}
    assert _proportional({"a": 20, "b": 10}, 10) == {"a": 7, "b": 3}
    assert _proportional({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # ties: the source listed first
    assert _proportional({"big": 9_990, "small": 10}, 5_000) == {"big": 4_995, "small": 5}
    assert _proportional({"big": 30_000, "small": 1}, 5_000) == {"big": 5_000, "small": 0}
    shares = _proportional({"a": 7, "b": 13, "c": 29, "d": 0}, 17)
    assert sum(shares.values()) == 17 and all(shares[k] <= n for k, n in {"a": 7, "b": 13, "c": 29, "d": 0}.items())
