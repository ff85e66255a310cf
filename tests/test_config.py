import pytest
import yaml
from support import REPO, tiny_params_dict, write_params

from guie.config import load_params, parse_params
from guie.errors import GuieError


def test_default_params_load_with_every_section():
    params = load_params(REPO / "params.yaml")
    assert params.pca.dims == 64
    assert params.train.finetune.lr_backbone == pytest.approx(1e-3)
    assert {s.role for s in params.data.sources} == {"train", "pca"}
    assert params.kaggle.competition == "google-universal-image-embedding"


def test_full_recipe_params_load():
    params = load_params(REPO / "params" / "full-recipe.yaml")
    assert params.model.name == "ViT-H-14"
    assert params.train.finetune.lr_backbone == pytest.approx(1e-7)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["train"]["finetune"].update(lr_backbne=1e-3), "train.finetune.lr_backbne: unknown key"),
        (lambda r: r["train"]["head"].update(epochs="five"), "train.head.epochs"),
        (lambda r: r.pop("pca"), "pca: missing"),
        (lambda r: r["data"]["sources"][0].update(colour="red"), "data.sources.0.colour: unknown key"),
        (lambda r: r["data"]["sources"][0].update(type="ftp"), "data.sources.0"),
        (lambda r: r["preprocess"].update(resize="stretch"), "preprocess.resize"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, expected):
    raw = tiny_params_dict()
    mutate(raw)
    path = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(GuieError) as err:
        load_params(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_yaml_exponent_without_dot_is_still_a_float():
    # YAML 1.1 reads 1e-4 as a string; users write it anyway
    raw = tiny_params_dict()
    raw["train"]["head"]["lr"] = "1e-4"
    assert parse_params(raw).train.head.lr == pytest.approx(1e-4)


def test_a_pca_source_is_required():
    raw = tiny_params_dict()
    raw["data"]["sources"] = raw["data"]["sources"][:1]
    with pytest.raises(GuieError, match="role 'pca'"):
        parse_params(raw)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(GuieError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [unclosed\n")
    with pytest.raises(GuieError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_section_hash_changes_only_with_its_sections():
    a = parse_params(tiny_params_dict())
    raw = tiny_params_dict()
    raw["evaluate"]["k"] = 3
    b = parse_params(raw)
    assert a.section_hash("pca", "model") == b.section_hash("pca", "model")
    assert a.section_hash("evaluate") != b.section_hash("evaluate")
    assert yaml.safe_dump(tiny_params_dict()) == yaml.safe_dump(tiny_params_dict())
