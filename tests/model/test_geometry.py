"""Any input resolution and overlapping patches for open_clip ViTs (preprocess.image_size,
model.patch_stride): the tower, its position embedding, and the 1.11-safe rewrite follow."""

from __future__ import annotations

import re

import open_clip
import pytest
import torch

from guie.errors import GuieError
from guie.model.backbone import load_tower, patch_grid, set_input_geometry
from guie.model.legacy_vit import LegacyVisionTower
from guie.params.model import ModelParams
from guie.stages.weights import materialise_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("geometry") / "w.pt"
    materialise_weights(ModelParams(), 0, path)
    return path


def _run(tower, side: int) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return tower.eval()(torch.randn(2, 3, side, side))


def test_the_native_geometry_changes_nothing(weights):
    native = load_tower("guie-tiny-vit", weights)
    same = load_tower("guie-tiny-vit", weights, image_size=224, patch_stride=32)
    assert native.state_dict().keys() == same.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(native.state_dict().values(), same.state_dict().values(), strict=True))
    assert same.conv1.stride == (32, 32) and tuple(same.grid_size) == (7, 7)


def test_another_resolution_resizes_the_position_embedding_as_open_clip_does(weights):
    tower = load_tower("guie-tiny-vit", weights, image_size=288)
    assert tuple(tower.grid_size) == (9, 9) and tower.positional_embedding.shape == (9 * 9 + 1, 128)
    reference = open_clip.create_model("guie-tiny-vit", pretrained=str(weights), force_image_size=288).visual
    torch.testing.assert_close(tower.positional_embedding, reference.positional_embedding, rtol=0, atol=0)
    torch.testing.assert_close(_run(tower, 288), _run(reference, 288), rtol=0, atol=0)


def test_overlapping_patches_give_a_denser_grid(weights):
    tower = load_tower("guie-tiny-vit", weights, image_size=224, patch_stride=24)
    grid = patch_grid(224, 32, 24)
    assert grid == 9 and tower.conv1.stride == (24, 24) and tower.positional_embedding.shape == (grid * grid + 1, 128)
    assert _run(tower, 224).shape == (2, 128)
    # the 1st place's geometry on ViT-H-14's 14 px patches: 290 px, stride 12 -> 24 x 24 = 576 patches + class token
    assert patch_grid(290, 14, 12) ** 2 + 1 == 577


@pytest.mark.parametrize(("side", "stride"), [(288, 0), (160, 0), (224, 24), (290, 20)])
def test_the_legacy_tower_follows_the_geometry(weights, side, stride):
    tower = load_tower("guie-tiny-vit", weights, image_size=side, patch_stride=stride)
    torch.testing.assert_close(_run(LegacyVisionTower(tower), side), _run(tower, side), atol=1e-5, rtol=1e-5)


def test_impossible_geometries_name_the_key(weights):
    with pytest.raises(
        GuieError, match=r"model.patch_stride: 40 is larger than model.name guie-tiny-vit's 32 px patches"
    ):
        load_tower("guie-tiny-vit", weights, image_size=224, patch_stride=40)
    with pytest.raises(GuieError, match=r"preprocess.image_size: 16 is smaller than model.name guie-tiny-vit's 32 px"):
        load_tower("guie-tiny-vit", weights, image_size=16)


def _chain(**stages: dict) -> dict:
    """The tiny params with train.stages' entries updated."""
    from support import tiny_params_dict

    raw = tiny_params_dict()
    for name, changes in stages.items():
        raw["train"]["stages"][name].update(changes)
    return raw


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ({"head": {"image_size": 16}}, "train.stages.head.image_size: 16 is smaller than model.name guie-tiny-vit's"),
        ({"finetune": {"patch_stride": 64}}, "train.stages.finetune.patch_stride: 64 is larger than model.name"),
        ({"finetune": {"image_size": 20}}, "train.stages.finetune.image_size: 20 is smaller than"),
    ],
)
def test_every_stages_geometry_is_checked_before_the_first_trains(stages, message, tmp_path):
    from support import write_params
    from typer.testing import CliRunner

    from guie.cli import app
    from guie.params.load import parse_params

    raw = _chain(**stages)
    parse_params(raw)  # the range checks pass: only the tower can tell
    with pytest.raises(GuieError, match=re.escape(message)):
        parse_params(raw, towers=True)
    # `guie train head` refuses a later stage's geometry before it reads anything (no manifest here)
    params = write_params(tmp_path / "params.yaml", raw)
    result = CliRunner().invoke(app, ["train", "head", "--params", str(params), "--root", str(tmp_path)])
    assert isinstance(result.exception, GuieError) and message in str(result.exception)


def test_an_inherited_geometry_is_named_by_the_key_that_set_it_once():
    from guie.params.load import parse_params

    raw = _chain()
    raw["preprocess"]["image_size"] = 20
    with pytest.raises(GuieError) as err:
        parse_params(raw, towers=True)
    assert str(err.value).count("preprocess.image_size: 20 is smaller") == 1


def test_a_stage_may_change_the_geometry_its_tower_can_run():
    from guie.params.load import parse_params

    parse_params(_chain(head={"image_size": 64, "patch_stride": 16}, finetune={"image_size": 96}), towers=True)


@pytest.mark.slow
@pytest.mark.parametrize(("side", "stride", "tokens"), [(280, 0, 401), (290, 12, 577)])
def test_vit_h_14_at_the_top_recipes_geometries(side, stride, tokens):
    # the real tower at its real size (random init): 1st place's 280 px, and 290 px with stride 12
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-H-14").visual
    set_input_geometry(visual, "ViT-H-14", side, stride)
    assert visual.positional_embedding.shape == (tokens, 1280) and visual.conv1.stride == (stride or 14,) * 2
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        expected = visual.eval()(x)
        torch.testing.assert_close(LegacyVisionTower(visual).eval()(x), expected, atol=1e-5, rtol=1e-4)
