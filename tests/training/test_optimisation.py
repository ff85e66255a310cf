"""What a stage trains and how: parameter groups (layer-wise decay), frozen parts, optimizer, schedule."""

import dataclasses
import math

import pytest
import torch
from support import tiny_params_dict

from guie.errors import GuieError
from guie.model.backbone import tower_layers
from guie.params.load import parse_params
from guie.params.train import StageParams
from guie.runtime import Runtime
from guie.stages.weights import materialise_weights
from guie.training.model import stage_model
from guie.training.optimisation import LrSchedule, learning_rates, make_optimizer, stage_groups


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    params = parse_params(tiny_params_dict())
    weights = tmp_path_factory.mktemp("w") / "backbone.pt"
    materialise_weights(params.model, params.seed, weights)
    return params, weights


def _model(built):
    params, weights = built

    class Row:  # what stage_model reads of a manifest row
        def __init__(self, label):
            self.label = label

    return stage_model(params, "head", weights, [Row("a"), Row("a"), Row("b")], None, None, 0)


def _stage(**changes) -> StageParams:
    return dataclasses.replace(StageParams(from_="head", epochs=1), **changes)


def _names(model, params) -> set[str]:
    named = {id(p): n for n, p in model.embedder.tower.named_parameters()}
    return {named[id(p)] for p in params if id(p) in named}


def test_blocks_from_n_train_those_blocks_and_what_follows_at_the_backbone_rate(built):
    model = _model(built)
    groups = stage_groups(model, _stage(tower="blocks", unfreeze_from=2, lr_backbone=1e-5, lr_head=1e-3), "s")
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-5), ("head", 1e-3)]
    trained = _names(model, groups[0]["params"])
    assert trained and all(
        n.startswith(("transformer.resblocks.2.", "transformer.resblocks.3.", "ln_post", "proj")) for n in trained
    )
    frozen = {n for n, p in model.embedder.tower.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.embedder.tower.named_parameters()} - trained
    with pytest.raises(GuieError, match=r"s.unfreeze_from: 9 is outside 0..4"):
        stage_groups(model, _stage(tower="blocks", unfreeze_from=9), "s")


def test_layer_wise_decay_gives_block_i_of_n_the_backbone_rate_times_decay_to_the_n_minus_1_minus_i(built):
    model = _model(built)
    groups = stage_groups(model, _stage(tower="all", lr_backbone=1e-5, lr_decay=0.5), "s")
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {
        "backbone.embed": 1e-5 * 0.5**4,
        "backbone.0": 1e-5 * 0.5**3,
        "backbone.1": 1e-5 * 0.5**2,
        "backbone.2": 1e-5 * 0.5,
        "backbone": 1e-5,  # the last block and what follows it
        "head": 1e-4,
    }
    before, blocks, after = tower_layers(model.embedder.tower)
    by_name = {g["name"]: g["params"] for g in groups}
    assert by_name["backbone.embed"] == before and by_name["backbone.1"] == blocks[1]
    assert by_name["backbone"] == [*blocks[3], *after]
    assert all(p.requires_grad for p in model.embedder.tower.parameters())
    # logged: the head's and the top backbone rate (their ratio is the recipe's), not one curve per block
    optimizer = make_optimizer(groups, _stage(), Runtime(torch.device("cpu"), None, False))
    assert learning_rates(optimizer) == {"lr/backbone": 1e-5, "lr/head": 1e-4}


def test_a_frozen_head_and_margin_head_take_no_gradient(built):
    model = _model(built)
    groups = stage_groups(model, _stage(tower="all", head="frozen"), "s")
    assert [g["name"] for g in groups] == ["backbone"]
    assert not any(p.requires_grad for p in [*model.embedder.head.parameters(), *model.margin.parameters()])


def test_sgd_with_momentum_and_adamw_are_built_as_the_stage_says(built):
    model = _model(built)
    runtime = Runtime(torch.device("cpu"), None, False)
    sgd = make_optimizer(
        stage_groups(model, _stage(optimizer="sgd", momentum=0.8, weight_decay=1e-4), "s"),
        _stage(optimizer="sgd", momentum=0.8, weight_decay=1e-4),
        runtime,
    )
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    adamw = make_optimizer(stage_groups(model, _stage(weight_decay=0.05), "s"), _stage(weight_decay=0.05), runtime)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    cosine = LrSchedule("cosine", warmup_steps=4, total_steps=14)
    assert [cosine.factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert (
        cosine.factor(4) == 1.0 and cosine.factor(9) == pytest.approx(0.5) and cosine.factor(14) == pytest.approx(0.0)
    )
    assert cosine.factor(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    constant = LrSchedule("constant", warmup_steps=2, total_steps=10)
    assert [constant.factor(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
