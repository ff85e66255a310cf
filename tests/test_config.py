import dataclasses

import pytest
import yaml
from support import REPO, tiny_params_dict, write_params

from guie.errors import GuieError
from guie.params.data import DownloadParams
from guie.params.fingerprint import artifact_hash
from guie.params.load import MAX_YAML_VALUES, load_params, parse_params, read_yaml
from guie.params.pca import COMPETITION_MAX_DIMS


def test_default_params_load_with_every_section():
    params = load_params(REPO / "params.yaml")
    assert params.pca.dims == 64
    assert params.train.stages["finetune"].lr_backbone == pytest.approx(1e-3)
    assert {s.role for s in params.data.sources} == {"train", "pca"}
    assert params.kaggle.competition == "google-universal-image-embedding"


def test_full_recipe_params_load():
    params = load_params(REPO / "params" / "full-recipe.yaml")
    assert params.model.name == "ViT-H-14"
    assert params.train.stages["finetune"].lr_backbone == pytest.approx(1e-7)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda r: r["train"]["stages"]["finetune"].update(lr_backbne=1e-3),
            "train.stages.finetune.lr_backbne: unknown key",
        ),
        (lambda r: r["train"]["stages"]["head"].update(epochs="five"), "train.stages.head.epochs"),
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
    raw["train"]["stages"]["head"]["lr_head"] = "1e-4"
    assert parse_params(raw).train.stages["head"].lr_head == pytest.approx(1e-4)


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


def test_artifact_hash_follows_the_params_that_shape_the_artifact_and_no_others():
    base = artifact_hash(parse_params(tiny_params_dict()))

    def changed(key: str, value) -> str:
        raw = {**tiny_params_dict(), "kaggle": {}}
        _set(raw, key, value)
        return artifact_hash(parse_params(raw))

    for key, value in (
        ("pca.dims", 32),
        ("train.stages.head.lr_head", 0.5),
        ("preprocess.resize", "shortest_side_crop"),
        ("seed", 9),
    ):
        assert changed(key, value) != base, key
    for key, value in (("evaluate.k", 3), ("kaggle.kernel_slug", "another-kernel"), ("train.num_workers", 2)):
        assert changed(key, value) == base, key
    assert yaml.safe_dump(tiny_params_dict()) == yaml.safe_dump(tiny_params_dict())


def _set(raw: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        raw = raw[int(part)] if isinstance(raw, list) else raw.setdefault(part, {})
    if isinstance(raw, list):
        raw[int(last)] = value
    else:
        raw[last] = value


# (key, value): each out of range; the cases first
OUT_OF_RANGE = [
    ("train.stages.head.epochs", -1),
    ("train.batch_size", -8),
    ("train.batch_size", 0),
    ("preprocess.image_size", 0),
    ("pca.dims", 0),
    ("evaluate.k", 0),
    ("pca.dims", 128),
    ("data.manifest.heldout_fraction", 2.5),
    ("train.stages.head.lr_head", -1),
    ("train.batch_size", 1),  # the head's BatchNorm needs two samples
    ("train.stages.finetune.epochs", -2),
    ("train.stages.finetune.lr_backbone", 0.0),
    ("train.stages.finetune.lr_head", -1e-4),
    ("train.stages.finetune.unfreeze_from", -1),
    ("train.num_workers", -1),
    ("train.processes", 0),
    ("train.sync_every", 0),
    ("train.checkpoint_every", -5),
    ("train.stages.head.cached_views", -1),
    ("train.augment.hflip", 1.5),
    ("data.manifest.heldout_fraction", 1.0),
    ("data.manifest.heldout_fraction", -0.1),
    ("data.manifest.min_image_side", 0),
    ("data.sources.0.max_images_per_class", 0),
    ("preprocess.image_size", 100_000),
    ("model.head_dim", 0),
    ("model.dropout", 1.0),
    ("train.stages.head.loss.subcenters", 0),
    ("train.stages.head.loss.scale", 0.0),
    ("train.stages.head.loss.margin_min", -0.1),
    ("train.stages.head.loss.margin_max", 2.0),  # cos(theta + m) must stay monotonic: m < pi/2
    ("pca.batch_size", 0),
    ("evaluate.queries_per_class", 0),
    ("evaluate.bootstrap", 1),
    ("train.stages.head.lr_head", float("inf")),
    ("train.stages.head.loss.scale", float("nan")),
    # a stage's geometry has preprocess.image_size's range
    ("train.stages.head.cached_views", 1_000_000),
    ("train.stages.head.image_size", 1),
    ("train.stages.finetune.image_size", 10_000),
    # seeds numpy and sklearn take
    ("seed", 2**70),
    ("seed", -1),
    # `.inf` nowhere, the kaggle section included (a wait that never ends, a timeout Python cannot set)
    ("kaggle.request_timeout_s", float("inf")),
    ("kaggle.poll_interval_s", float("inf")),
]


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v in OUT_OF_RANGE])
def test_out_of_range_values_name_the_key_the_value_and_the_range(tmp_path, key, value):
    raw = tiny_params_dict()
    _set(raw, key, value)
    path = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(GuieError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message
    line = next(line for line in message.splitlines() if line.strip().startswith(f"{key}:"))
    assert f"(got {value!r})" in line
    assert "must be" in line or "finite" in line


def test_the_range_message_states_the_whole_range():
    raw = tiny_params_dict()
    raw["pca"]["dims"] = 128
    raw["data"]["manifest"]["heldout_fraction"] = 2.5
    raw["train"]["batch_size"] = -8
    with pytest.raises(GuieError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"pca.dims: must be in [1, {COMPETITION_MAX_DIMS}] (got 128)" in message
    assert "data.manifest.heldout_fraction: must be in [0, 1) (got 2.5)" in message
    assert "train.batch_size: must be >= 2 (got -8)" in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train.batch_size": 16, "train.processes": 3}, ["train.batch_size (16)", "train.processes (3)"]),
        ({"model.head_dim": 32, "pca.dims": 64}, ["pca.dims (64)", "model.head_dim (32)"]),
        (
            {"train.stages.head.loss.margin_min": 0.6, "train.stages.head.loss.margin_max": 0.5},
            ["train.stages.head.loss", "margin_min (0.6)", "margin_max (0.5)"],
        ),
        ({"train.augment.jpeg_quality": [95, 50]}, ["train.augment.jpeg_quality ([95, 50])"]),
        ({"train.augment.cutout_area": [0.5, 0.1]}, ["train.augment.cutout_area ([0.5, 0.1])"]),
        ({"export.half": True, "export.device": "cpu"}, ["export.half (true)", "export.device: cuda (got cpu)"]),
    ],
)
def test_cross_field_rules_name_both_keys_and_values(changes, expected):
    raw = tiny_params_dict()
    for key, value in changes.items():
        _set(raw, key, value)
    with pytest.raises(GuieError) as err:
        parse_params(raw)
    for text in expected:
        assert text in str(err.value)


def test_edges_of_the_ranges_are_accepted():
    raw = tiny_params_dict()
    for key, value in [
        ("train.stages.finetune.epochs", 0),  # 0 epochs: export the model the last stage starts from (an ablation)
        ("train.stages.head.epochs", 0),
        ("train.batch_size", 2),
        ("pca.dims", COMPETITION_MAX_DIMS),
        ("model.head_dim", COMPETITION_MAX_DIMS),
        ("data.manifest.heldout_fraction", 0.0),
        ("train.stages.head.loss.margin_min", 0.0),
        ("train.stages.head.loss.margin_max", 1.5),
        ("evaluate.k", 1),
    ]:
        _set(raw, key, value)
    params = parse_params(raw)
    assert params.train.stages["finetune"].epochs == 0 and params.pca.dims == COMPETITION_MAX_DIMS


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("seed: 0\nseed: 1\n", "seed", (2, 1)),
        (
            "train:\n  stages:\n    head:\n      epochs: 5\n      lr_head: 0.1\n      epochs: 6\n",
            "train.stages.head.epochs",
            (6, 4),
        ),
        ("data:\n  sources:\n    - name: a\n      name: b\n", "data.sources.0.name", (4, 3)),
    ],
)
def test_a_duplicate_key_is_refused_at_any_level_with_its_lines(tmp_path, text, key, lines):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(GuieError) as err:
        load_params(path)
    assert str(err.value) == f"{path}:{lines[0]}: duplicate key {key} (first at line {lines[1]}); keep one"


def test_a_duplicate_top_level_key_in_a_full_params_file_does_not_silently_win(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text() + "\nseed: 7\n")
    with pytest.raises(GuieError, match="duplicate key seed"):
        load_params(path)


def test_anchors_and_merge_keys_for_small_reuse_still_work(tmp_path):
    raw = tiny_params_dict()
    text = yaml.safe_dump(raw, sort_keys=False)
    # one anchored list reused by both sources, and a merge key overriding one field
    text = text.replace("- name: synthetic\n", "- &train_src\n    name: synthetic\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("\ndata:\n", "\nshared: &domains [apparel, cars]\ndata:\n", 1))
    assert "shared" in read_yaml(path)  # parses; `shared` itself is then an unknown key for parse_params
    raw_text = text.replace("- name: synthetic_pca\n", "- <<: *train_src\n    name: synthetic_pca\n", 1)
    path.write_text(raw_text)
    params = load_params(path)
    train_src, pca_src = params.data.sources
    assert pca_src.name == "synthetic_pca" and pca_src.role == "pca"  # its own keys override the merged ones
    assert train_src.name == "synthetic"


def _billion_laughs(levels: int = 10, width: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nseed: *l{levels - 1}\n"


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path):
    text = _billion_laughs()
    assert len(text) < 1100  # ~1 KB that expands to 10**10 values
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(GuieError) as err:
        load_params(path)  # terminates: the check sizes each node once, never expanding
    assert f"over {MAX_YAML_VALUES:,} values once YAML aliases are expanded" in str(err.value)
    assert str(path) in str(err.value)


def test_a_small_expansion_passes_and_the_cap_is_a_parameter(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(_billion_laughs(levels=3, width=3))
    assert read_yaml(path)["seed"] == [[["lol"] * 3] * 3] * 3
    with pytest.raises(GuieError, match="over 10 values"):
        read_yaml(path, limit=10)


def test_recursive_aliases_deep_nesting_and_bad_encodings_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: &a [1, *a]\n")
    with pytest.raises(GuieError, match="refers to its own anchor"):
        load_params(path)
    path.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(GuieError, match="nested too deeply"):
        load_params(path)
    path.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(GuieError, match="not UTF-8"):
        load_params(path)


def _dotted(raw: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False
        raw = raw[part]
    return True


@pytest.mark.parametrize("params_file", ["params.yaml", "params/full-recipe.yaml"])
def test_every_param_dvc_yaml_declares_is_in_the_params_file(params_file):
    # DVC refuses to run a stage whose declared param is missing: `cp params/full-recipe.yaml params.yaml` must work
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    raw = yaml.safe_load((REPO / params_file).read_text())
    declared = set()
    for stage in stages.values():
        keys = [k for k in stage.get("do", stage).get("params", []) if isinstance(k, str)]
        # a templated stage's `${key}` is each key of what it iterates (train.stages)
        names = raw["train"]["stages"] if "foreach" in stage else [None]
        declared |= {k.replace("${key}", name) if name else k for k in keys for name in names}
    assert declared and sorted(k for k in declared if not _dotted(raw, k)) == []


def test_unpacking_caps_do_not_change_the_artifact_hash(tiny_params):
    looser = dataclasses.replace(
        tiny_params, data=dataclasses.replace(tiny_params.data, download=DownloadParams(max_compression_ratio=999.0))
    )
    assert artifact_hash(looser) == artifact_hash(tiny_params)


def _chain(**stages) -> dict:
    raw = tiny_params_dict()
    raw["train"]["stages"] = stages
    raw["train"]["final"] = list(stages)[-1]
    return raw


@pytest.mark.parametrize(
    ("stages", "final", "expected"),
    [
        (
            {"a": {"from": "b", "epochs": 1}, "b": {"from": "backbone", "epochs": 1}},
            "b",
            "train.stages.a.from: 'b' is neither",
        ),
        ({"a": {"from": "a", "epochs": 1}}, "a", "train.stages.a.from: 'a' is neither"),
        (
            {"a": {"from": "backbone", "epochs": 1, "tower": "blocks"}},
            "a",
            "unfreeze_from (None) goes with tower: blocks",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "unfreeze_from": 2}},
            "a",
            "unfreeze_from (2) goes with tower: blocks (got tower: frozen)",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "head": "frozen"}},
            "a",
            "train.stages.a: tower: frozen and head: frozen train nothing",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "sources": ["nope"]}},
            "a",
            "train.stages.a.sources: ['nope'] are not train sources",
        ),
        ({"pca": {"from": "backbone", "epochs": 1}}, "pca", "train.stages.pca: a stage name is"),
        ({"Big Stage": {"from": "backbone", "epochs": 1}}, "Big Stage", "train.stages.Big Stage: a stage name is"),
        (
            {"a": {"from": "backbone", "epochs": 1}, "b": {"from": "a", "epochs": 1}},
            "a",
            "train.final ('a') must name the last stage",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "wise_ft": [0.5, 0.5]}},
            "a",
            "train.stages.a.wise_ft: [0.5, 0.5] repeats a mixing coefficient",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "wise_ft": [0.0, 0.5]}},
            "a",
            "train.stages.a.wise_ft: the mixing coefficient is chosen on the selection split; "
            "set data.manifest.selection_fraction",
        ),
        (
            {"a": {"from": "backbone", "epochs": 1, "wise_ft": [0.5, 1.5]}},
            "a",
            "train.stages.a.wise_ft.1: must be <= 1",
        ),
        ({}, "a", "train.stages: empty"),
        ({"a": {"epochs": 1}}, "a", "train.stages.a.from: missing key"),
        ({"a": {"from": "backbone"}}, "a", "train.stages.a.epochs: missing key"),
    ],
)
def test_the_chain_of_stages_is_checked_naming_the_stage_and_field(stages, final, expected):
    raw = _chain(**stages) if stages else _chain(a={"from": "backbone", "epochs": 1})
    raw["train"]["stages"] = stages
    raw["train"]["final"] = final
    with pytest.raises(GuieError) as err:
        parse_params(raw)
    assert expected in str(err.value)


def test_a_chain_of_several_stages_with_every_kind_of_setting_loads():
    raw = _chain(
        head={"from": "backbone", "epochs": 1, "loss": {"type": "cosface", "margin": 0.35, "subcenters": 1}},
        tower224={
            "from": "head",
            "epochs": 1,
            "tower": "all",
            "head": "frozen",
            "optimizer": "sgd",
            "lr_backbone": 1e-5,
        },
        tower280={
            "from": "tower224",
            "epochs": 1,
            "image_size": 280,
            "patch_stride": 24,
            "tower": "blocks",
            "unfreeze_from": 1,
            "lr_decay": 0.8,
            "schedule": "cosine",
            "warmup_steps": 3,
            "sources": ["synthetic"],
            "margin_head": "extend",
        },
    )
    stages = parse_params(raw).train.stages
    assert list(stages) == ["head", "tower224", "tower280"]
    assert stages["tower224"].from_ == "head" and not stages["tower224"].head_trains
    assert stages["tower280"].image_size == 280 and stages["head"].loss.type == "cosface"


def test_the_old_two_stage_params_are_refused_with_the_equivalent_chain(tmp_path):
    raw = tiny_params_dict()
    chain = raw["train"].pop("stages")
    raw["train"].pop("final")
    raw["train"]["head"] = {"epochs": 1, "cached_views": 1, "lr": 1e-3}
    raw["train"]["finetune"] = {"epochs": 1, "lr_backbone": 1e-3, "lr_head": 1e-3, "unfreeze_from": 2}
    raw["loss"] = dict(chain["head"]["loss"])
    path = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(GuieError) as err:
        load_params(path)
    message = str(err.value)
    assert str(path) in message and "train.head / train.finetune" in message
    suggested = yaml.safe_load(message[message.index("train:\n") :])
    raw["train"].pop("head"), raw["train"].pop("finetune"), raw.pop("loss")
    raw["train"].update(suggested["train"])
    # the printed chain is the one params.yaml has now: same stages, same values
    assert parse_params(raw).train == parse_params(tiny_params_dict()).train


def test_the_old_image_cache_key_names_its_replacement():
    raw = tiny_params_dict()
    raw["train"]["cache_images"] = True
    with pytest.raises(GuieError, match=r"train.cache_images .* replaced by train.prepared_store"):
        parse_params(raw)


def _soup(raw: dict, *ingredients: dict) -> dict:
    raw["train"]["stages"]["head"]["soup"] = {"ingredients": list(ingredients)}
    return raw


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"seed": 2**32 - 1},  # in range itself, but finetune (depth 1) would seed with 2**32
            f"seed ({2**32 - 1}) + the stage's depth (1) must be <= {2**32 - 1} (numpy's largest seed) "
            "for train.stages.finetune",
        ),
        (
            {"data.sources.0": {"type": "folder", "name": "mine", "domain": "cars", "path": ""}},
            "data.sources.0: path '' is the project root, which holds every other source's images",
        ),
        (
            {"data.sources.0": {"type": "folder", "name": "mine", "domain": "cars", "path": "./"}},
            "data.sources.0: path './' is the project root",
        ),
    ],
)
def test_params_that_used_to_fail_later_are_refused_when_they_load(changes, expected):
    raw = tiny_params_dict()
    for key, value in changes.items():
        _set(raw, key, value)
    with pytest.raises(GuieError) as err:
        parse_params(raw)
    assert expected in str(err.value)


def test_a_stage_name_too_long_for_a_file_name_is_refused():
    raw = tiny_params_dict()
    long = "h" * 65
    raw["train"]["stages"][long] = raw["train"]["stages"].pop("finetune") | {"from": "head"}
    raw["train"]["final"] = long
    with pytest.raises(GuieError, match=rf"train.stages.{long}: a stage name .* at most 64 characters"):
        parse_params(raw)
    raw["train"]["stages"]["h" * 64] = raw["train"]["stages"].pop(long)
    raw["train"]["final"] = "h" * 64
    parse_params(raw)


def test_cached_views_are_bounded():
    raw = tiny_params_dict()
    _set(raw, "train.stages.head.cached_views", 64)
    parse_params(raw)
    _set(raw, "train.stages.head.cached_views", 65)
    with pytest.raises(GuieError, match=r"train.stages.head.cached_views: must be in \[0, 64\] \(got 65\)"):
        parse_params(raw)


def test_soup_ingredients_are_compared_with_train_augment_filled_in():
    raw = tiny_params_dict()
    augment = parse_params(raw).train.augment
    default_hflip, quality = augment.hflip, list(augment.jpeg_quality)
    with pytest.raises(GuieError, match=r"train.stages.head.soup.ingredients: \[1\] repeat an earlier ingredient"):
        parse_params(_soup(raw, {"seed": 0}, {"seed": 0, "augment": {"hflip": default_hflip}}))
    with pytest.raises(GuieError, match=r"\[1\] repeat an earlier ingredient"):
        parse_params(_soup(raw, {"seed": 0}, {"seed": 0, "augment": {"jpeg_quality": quality}}))  # a list, a tuple
    parse_params(_soup(raw, {"seed": 0}, {"seed": 0, "augment": {"hflip": 0.0 if default_hflip else 1.0}}))
