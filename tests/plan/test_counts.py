"""Image counts: from the manifest when it is these params', else estimated from the params."""

from __future__ import annotations

from support import REPO

from guie.params.load import load_params
from guie.plan.counts import counts, from_params


def _manifest(path, rows):
    path.write_text(
        "path,sha256,source,domain,label,split,width,height\n"
        + "".join(f"{p},{i:064x},{s},d,{label},{split},64,64\n" for i, (p, s, label, split) in enumerate(rows))
    )


def test_the_embedded_default_is_estimated_exactly_without_a_manifest():
    c = from_params(load_params(REPO / "params.yaml"))
    # 5 domains x 40 instances x 6 views, 30% of the 200 classes held out; 5 x 30 x 2 PCA images
    assert (c.train, c.classes, c.heldout, c.selection, c.pca) == ({"synthetic": 840}, {"synthetic": 140}, 360, 0, 300)
    assert not c.exact


def test_caps_over_all_sources_send_classes_back_to_training():
    c = from_params(load_params(REPO / "params" / "full-recipe.yaml"))
    assert not c.unknown and c.pca == 130_000
    # 30% of 51,256 kept classes is over heldout_max_classes 5000: each source holds out its share of 5000
    kept = 10_000 + 9_691 + 11_318 + 20_000 + 101 + 146
    assert c.classes["food101"] == round(101 - 101 * 5000 / kept)
    assert c.heldout < 5000 * 50  # at most 50 images each
    assert 300_000 < c.train_images() < 700_000


def test_a_manifest_of_these_sources_is_counted_and_one_of_others_is_not(tmp_path):
    params = load_params(REPO / "params.yaml")
    manifest = tmp_path / "manifest.csv"
    _manifest(
        manifest,
        [
            ("a.jpg", "synthetic", "x", "train"),
            ("b.jpg", "synthetic", "y", "train"),
            ("c.jpg", "synthetic_pca", "z", "pca"),
        ]
        + [("d.jpg", "synthetic", "w", "heldout")],
    )
    c = counts(params, manifest)
    assert c.exact and c.train == {"synthetic": 2} and c.classes == {"synthetic": 2}
    assert (c.heldout, c.pca) == (1, 1) and sorted(c.sample) == ["a.jpg", "b.jpg"]
    _manifest(manifest, [("a.jpg", "gldv2", "x", "train")])
    assert not counts(params, manifest).exact
