"""Presets: named real sources that carry their layout, origin and terms."""

from __future__ import annotations

import pytest
from support import REPO, tiny_params_dict

from guie.data.presets import PRESETS
from guie.errors import GuieError
from guie.params.data import KaggleCompetitionSource, KaggleDatasetSource
from guie.params.load import load_params, parse_params


def _with_source(entry: dict):
    """The tiny default with `entry` added last."""
    raw = tiny_params_dict()
    raw["data"]["sources"].append(entry)
    return parse_params(raw)


def test_the_130k_preset_is_the_public_kaggle_set_used_for_pca():
    raw = tiny_params_dict()
    raw["data"]["sources"][1] = {"preset": "guie-130k"}
    source = parse_params(raw).data.sources[1]
    assert isinstance(source, KaggleDatasetSource)
    assert (source.name, source.role, source.domain) == ("guie-130k", "pca", "{parent}")
    assert source.dataset == "rhtsingh/130k-images-512x512-universal-image-embeddings"


def test_entry_keys_override_the_preset():
    source = _with_source({"preset": "gldv2", "name": "landmarks", "max_classes": 5}).data.sources[-1]
    assert isinstance(source, KaggleCompetitionSource)
    assert (source.name, source.competition, source.max_classes) == ("landmarks", "landmark-recognition-2021", 5)


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(GuieError, match=r"data\.sources\.2: unknown preset 'gldv3'; known presets: .*gldv2"):
        _with_source({"preset": "gldv3"})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_records_origin_and_terms(name):
    source = _with_source({"preset": name}).data.sources[-1]
    assert source.homepage.startswith("https://") and len(source.terms) > 40


def test_the_full_recipe_trains_on_the_presets_and_fits_pca_on_the_130k_set():
    sources = load_params(REPO / "params" / "full-recipe.yaml").data.sources
    assert all(s.terms and s.homepage for s in sources)
    assert [s.name for s in sources if s.role == "pca"] == ["guie-130k"]
    assert {"gldv2", "products10k"} <= {s.name for s in sources}
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Data sources") :]
    assert all(f"`{name}`" in section for name in PRESETS)  # the README lists every preset
