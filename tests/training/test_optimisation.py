"""What a stage trains and how: parameter groups (layer-wise decay), frozen parts, optimizer, schedule."""

import dataclasses
import math

import pytest
import torch
from support import tiny_params_dict

from guie.errors import GuieError
from guie.model.backbone import load_tower, tower_layers
from guie.params.load import parse_params
from guie.params.model import ModelParams
from guie.params.train import StageParams
from guie.runtime import Runtime
from guie.stages.weights import materialise_weights
from guie.training.model import stage_model
from guie.training.optimisation import (
    LrSchedule,
    decays,
    learning_rates,
    make_optimizer,
    stage_groups,
    tower_groups,
)


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

    return stage_model(params, "head", weights, [Row("a"), Row("a"), Row("b")], None)


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


def test_layer_wise_decay_follows_timm_the_last_block_at_decay_the_embeddings_at_decay_to_the_n_plus_1(built):
    model = _model(built)
    groups = stage_groups(model, _stage(tower="all", lr_backbone=1e-5, lr_decay=0.5), "s")
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {
        "backbone.embed": 1e-5 * 0.5**5,
        "backbone.0": 1e-5 * 0.5**4,
        "backbone.1": 1e-5 * 0.5**3,
        "backbone.2": 1e-5 * 0.5**2,
        "backbone.3": 1e-5 * 0.5,  # the last block: one step below what follows it
        "backbone": 1e-5,  # what follows the blocks (ln_post, proj)
        "head": 1e-4,
    }
    before, blocks, after = tower_layers(model.embedder.tower)
    by_name = {g["name"]: g["params"] for g in groups}
    assert by_name["backbone.embed"] == before and by_name["backbone.1"] == blocks[1]
    assert by_name["backbone.3"] == blocks[3] and by_name["backbone"] == after
    assert all(p.requires_grad for p in model.embedder.tower.parameters())
    assert all(g["weight_decay"] == 0.0 for g in groups)  # weight_decay 0: no decay groups to split off
    # logged: the head's and the top backbone rate (their ratio is the recipe's), not one curve per block
    optimizer = make_optimizer(groups, _stage(), Runtime(torch.device("cpu"), None, False))
    assert learning_rates(optimizer) == {"lr/backbone": 1e-5, "lr/head": 1e-4}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """The tiny open_clip ViT (4 blocks) and the tiny SigLIP tower (timm, 3 blocks, attention pool)."""
    built = {}
    for name in ("guie-tiny-vit", "guie-tiny-siglip"):
        weights = tmp_path_factory.mktemp(name) / "backbone.pt"
        materialise_weights(ModelParams(name=name), 0, weights)
        built[name] = load_tower(name, weights)
    return built


_VIT_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_TIMM_MATRICES = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
# per tower: its blocks' name prefix, its depth, what follows the blocks, and every parameter that
# decays (the rest: biases, norms, position embeddings, class token, attention-pool query)
TOWER_RULES = {
    "guie-tiny-vit": (
        "transformer.resblocks.",
        4,
        ("ln_post.", "proj"),
        {"conv1.weight", "proj", *(f"transformer.resblocks.{i}.{m}" for i in range(4) for m in _VIT_MATRICES)},
    ),
    "guie-tiny-siglip": (
        "trunk.blocks.",
        3,
        ("trunk.norm.", "trunk.attn_pool."),
        {
            "trunk.patch_embed.proj.weight",
            *(f"trunk.blocks.{i}.{m}" for i in range(3) for m in _TIMM_MATRICES),
            *(
                f"trunk.attn_pool.{m}"
                for m in ("q.weight", "kv.weight", "proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
            ),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(TOWER_RULES))
def test_every_tower_parameter_gets_timms_lr_scale_and_open_clips_decay_rule(towers, name):
    tower = towers[name]
    blocks, n, after, decayed = TOWER_RULES[name]
    names = [k for k, _ in tower.named_parameters()]
    assert {"positional_embedding", "class_embedding", "trunk.pos_embed", "trunk.attn_pool.latent"} & set(names)
    assert decayed < set(names)

    def expected(param_name: str) -> tuple[float, float]:
        if param_name.startswith(blocks):
            layer = int(param_name[len(blocks) :].split(".")[0]) + 1
        else:
            layer = n + 1 if param_name.startswith(after) else 0
        return 1e-5 * 0.5 ** (n + 1 - layer), 0.05 if param_name in decayed else 0.0

    stage = _stage(tower="all", lr_backbone=1e-5, lr_decay=0.5, weight_decay=0.05)
    groups = tower_groups(tower, stage, "s")
    named = {id(p): k for k, p in tower.named_parameters()}
    got = {named[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert sorted(got) == sorted(names)  # every parameter once
    assert got == {k: expected(k) for k in names}
    # a `.no_decay` group per layer beside the decayed one, named after it
    assert {g["name"] for g in groups} >= {"backbone", "backbone.no_decay", "backbone.embed.no_decay", "backbone.0"}
    assert all(g["name"].endswith(".no_decay") == (g["weight_decay"] == 0.0) for g in groups)
    assert all(decays(k, p) == (k in decayed) for k, p in tower.named_parameters())


def test_the_head_decays_its_linear_weight_and_the_margin_heads_class_weights_only(built):
    model = _model(built)
    groups = stage_groups(model, _stage(tower="frozen", lr_head=1e-3, weight_decay=0.1), "s")
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("head.no_decay", 1e-3, 0.0),  # the head's BatchNorm comes first
        ("head", 1e-3, 0.1),
    ]
    kept, decayed = ({id(p) for p in g["params"]} for g in groups)
    head, margin = model.embedder.head, model.margin
    assert decayed == {id(head[2].weight), id(margin.weight)}  # Linear(tower -> head_dim), class weights
    assert kept == {id(head[0].weight), id(head[0].bias), id(head[2].bias)}  # BatchNorm, the Linear's bias
    optimizer = make_optimizer(groups, _stage(), Runtime(torch.device("cpu"), None, False))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.1]
    assert learning_rates(optimizer) == {"lr/head": 1e-3}


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
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.0, 0.05]


def test_the_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    cosine = LrSchedule("cosine", warmup_steps=4, total_steps=14)
    assert [cosine.factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert (
        cosine.factor(4) == 1.0 and cosine.factor(9) == pytest.approx(0.5) and cosine.factor(14) == pytest.approx(0.0)
    )
    assert cosine.factor(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    constant = LrSchedule("constant", warmup_steps=2, total_steps=10)
    assert [constant.factor(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
