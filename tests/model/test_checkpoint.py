"""The trained checkpoint carries what defines the model; later stages rebuild it from there."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from support import tiny_params_dict

from guie.errors import GuieError
from guie.model import backbone
from guie.model.checkpoint import load_trained_embedder
from guie.model.definition import definition_from_params
from guie.params.load import parse_params
from guie.stages.export import export_submission
from guie.stages.pca import PcaPaths, run_pca


def _params(**changes):
    raw = tiny_params_dict()
    for key, value in changes.items():
        section, field = key.split(".")
        raw[section][field] = value
    return parse_params(raw)


def test_the_checkpoint_stores_the_model_definition(trained_project):
    params, layout = trained_project
    for checkpoint in (layout.trained("head"), layout.trained("finetune")):
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["definition"]
        assert stored == definition_from_params(params.model, params.preprocess).to_dict()
        assert stored["image_size"] == 224 and stored["resize"] == "squash" and stored["head_dim"] == 256
        assert stored["tower_config"]["vision_cfg"]["patch_size"] == 32  # guie-tiny-vit's


def test_the_model_and_its_preprocessing_come_from_the_checkpoint(trained_project):
    params, layout = trained_project
    # pca and export do not read model.head_dim: the checkpoint's 256 wins over params' 128
    embedder = load_trained_embedder(_params(**{"model.head_dim": 128}), layout.trained("finetune"), layout.weights)
    assert embedder.head[-1].out_features == 256
    assert (embedder.preprocess.image_size, embedder.preprocess.crop) == (224, False)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "preprocess.resize",
            "shortest_side_crop",
            "preprocess.resize: the checkpoint was trained with 'squash', params.yaml says 'shortest_side_crop'",
        ),
        (
            "model.name",
            "guie-tiny-siglip",
            "model.name: the checkpoint was trained with 'guie-tiny-vit', params.yaml says 'guie-tiny-siglip'",
        ),
    ],
)
def test_pca_and_export_refuse_a_checkpoint_params_disagree_with(trained_project, tmp_path, key, value, message):
    params, layout = trained_project
    changed = _params(**{key: value})
    with pytest.raises(GuieError, match="re-run training") as pca_error:
        paths = dataclasses.replace(PcaPaths.in_layout(layout, params), out=tmp_path / "pca.pt", plots_dir=tmp_path)
        run_pca(changed, paths)
    with pytest.raises(GuieError) as export_error:
        export_submission(
            changed, layout.trained("finetune"), layout.weights, layout.pca, tmp_path / "s.zip", tmp_path / "e.json"
        )
    for err in (pca_error, export_error):
        assert message in str(err.value) and str(layout.trained("finetune")) in str(err.value)
    assert not (tmp_path / "pca.pt").exists() and not (tmp_path / "s.zip").exists()


def test_pca_and_export_take_the_image_size_and_stride_of_the_final_stage_not_preprocess(trained_project):
    # a stage may change them (train.stages.<name>.image_size); preprocess.image_size is where training starts
    params, layout = trained_project
    embedder = load_trained_embedder(
        _params(**{"preprocess.image_size": 192}), layout.trained("finetune"), layout.weights
    )
    assert embedder.preprocess.image_size == 224 and tuple(embedder.tower.grid_size) == (7, 7)


def test_an_edited_tower_config_under_the_same_name_is_refused(trained_project, tmp_path, monkeypatch):
    params, layout = trained_project
    configs = tmp_path / "configs"
    shutil.copytree(backbone._CONFIG_DIR, configs)
    config = json.loads((configs / "guie-tiny-vit.json").read_text())
    config["vision_cfg"]["layers"] = 6
    (configs / "guie-tiny-vit.json").write_text(json.dumps(config))
    import open_clip

    open_clip.add_model_config(configs)
    try:
        with pytest.raises(GuieError, match=r"model.name: open_clip's config of guie-tiny-vit is now .*'layers': 6"):
            load_trained_embedder(params, layout.trained("finetune"), layout.weights)
    finally:
        open_clip.add_model_config(backbone._CONFIG_DIR)


def test_a_checkpoint_without_a_definition_asks_for_retraining(trained_project, tmp_path):
    params, layout = trained_project
    state = torch.load(layout.trained("finetune"), map_location="cpu", weights_only=True)
    del state["definition"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(GuieError, match=r"old.pt: written by an older guie .*re-run training"):
        load_trained_embedder(params, old, layout.weights)


def test_a_stage_refuses_an_input_checkpoint_with_a_head_of_another_size(trained_project):
    from guie.model.checkpoint import read_checkpoint
    from guie.training.model import TRAINING_FIELDS

    params, layout = trained_project
    other = dataclasses.replace(params, model=dataclasses.replace(params.model, head_dim=128))
    with pytest.raises(GuieError, match="model.head_dim: the checkpoint was trained with 256, params.yaml says 128"):
        read_checkpoint(other, layout.trained("head"), TRAINING_FIELDS)
