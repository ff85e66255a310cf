"""The plan's arithmetic and its warnings, on fixed loader rates (no verdict depends on a clock)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import STARTUP_S, fixed
from support import REPO

from guie.params.load import load_params
from guie.plan.counts import from_params
from guie.plan.estimate import build_plan, geometries
from guie.plan.machines import cpu_machine, gpu_machine
from guie.plan.render import render

RECIPES = sorted((REPO / "params" / "recipes").glob("*.yaml")) + [REPO / "params" / "full-recipe.yaml"]
H100_NODE = gpu_machine("h100", 8, 96)


def plan_of(params, machine=H100_NODE, mfu=0.35):
    sizes = {params.preprocess.image_size, *(s for s, _ in geometries(params).values())}
    return build_plan(params, machine, from_params(params), fixed(sizes), mfu)


def with_train(params, **changes):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def full_recipe():
    return load_params(REPO / "params" / "full-recipe.yaml")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_plans_every_stage(path):
    params = load_params(path)
    plan = plan_of(params)
    stages = [r.stage for r in plan.rows]
    trains = [f"train@{name}" for name in params.train.stages]
    assert stages == ["download", "weights", "manifest", *trains, "pca", "export", "verify", "evaluate"]
    for row in plan.rows:
        if row.stage.startswith("train@"):
            assert row.flops > 0 and row.compute_s > 0 and row.gpu_bytes > 0 and row.wall_s > STARTUP_S
            assert row.batch == params.train.batch_size // 8
    assert plan.wall_s > 3600  # hours of work for a real recipe, even on eight H100s
    lines = render(plan, path.name)
    assert sum(line.startswith(("train@", "pca ", "evaluate ")) for line in lines) == len(trains) + 2


def test_a_soup_trains_each_ingredient():
    params = load_params(REPO / "params" / "recipes" / "fourth.yaml")
    soup = next(r for r in plan_of(params).rows if r.stage == "train@tower")
    single = dataclasses.replace(params.train.stages["tower"], soup=None)
    alone_params = with_train(params, stages={**params.train.stages, "tower": single})
    alone = next(r for r in plan_of(alone_params).rows if r.stage == "train@tower")
    assert soup.epochs.endswith("x3 runs")
    assert soup.flops == pytest.approx(3 * alone.flops, rel=0.05)
    assert soup.disk_bytes > alone.disk_bytes  # the ingredients are kept


def test_a_frozen_stage_runs_the_tower_once_per_cached_view():
    params = load_params(REPO / "params" / "recipes" / "linear-probe-siglip.yaml")
    counts = from_params(params)
    head = next(r for r in plan_of(params).rows if r.stage == "train@head")
    assert head.epochs == "10, 2 cached views"
    assert head.images == 2 * counts.train_images() + counts.heldout  # two views, held-out features once


def test_a_tiny_per_process_batch_on_eight_gpus_is_communication_bound():
    plan = plan_of(with_train(full_recipe(), batch_size=8))
    [warning] = [w for w in plan.warnings if w.startswith("train@finetune is communication-bound")]
    assert "1 image(s) per process (train.batch_size 8 over 8 processes)" in warning
    assert "train.batch_size >= " in warning and "train.stages.finetune.lr_backbone" in warning
    # the head stage's all-reduce is the margin head's (~36k classes x 3 x 256): no batch hides that
    [head] = [w for w in plan.warnings if w.startswith("train@head is communication-bound")]
    assert "of the head's gradients" in head and "a larger train.batch_size takes fewer steps" in head
    finetune = next(r for r in plan.rows if r.stage == "train@finetune")
    assert finetune.bound == "all-reduce"
    assert finetune.grad_bytes == pytest.approx(1.35 * 2**30, rel=0.05)  # ~335M float32 gradients and the head's


def test_the_implied_learning_rate_scales_with_the_batch():
    warning = next(w for w in plan_of(with_train(full_recipe(), batch_size=8)).warnings if "finetune is comm" in w)
    batch = int(warning.split("train.batch_size >= ")[1].split()[0])
    factor = batch / 8
    assert f"lr_backbone {1e-7 * factor:.3g}" in warning and f"(x{factor:.3g})" in warning


def test_a_big_enough_batch_hides_the_all_reduce():
    plan = plan_of(with_train(full_recipe(), batch_size=512))
    assert not [w for w in plan.warnings if "communication-bound" in w]
    assert plan_of(full_recipe(), machine=gpu_machine("h100", 1, 12)).rows[4].comm_s is None  # one GPU: none


def test_a_huge_model_on_a_small_gpu_is_out_of_memory():
    params = load_params(REPO / "params" / "recipes" / "first.yaml")  # every ViT-H weight trains
    plan = plan_of(with_train(params, batch_size=64), machine=gpu_machine("t4", 1, 12))
    oom = [w for w in plan.warnings if "out of memory" in w]
    assert oom and oom[0].startswith("train@tower224 is out of memory")
    assert "train.batch_size" in oom[0] and "14.6 GiB of GPU memory" in oom[0]
    assert not [w for w in plan_of(params).warnings if "out of memory" in w]  # 4 per H100 fit


def test_a_loader_heavy_config_with_few_cpus_is_loader_bound():
    params = with_train(full_recipe(), prepared_store=False, num_workers=2)
    plan = plan_of(params, machine=gpu_machine("h100", 8, 4))
    [warning] = [w for w in plan.warnings if "loader-bound" in w and w.startswith("train@finetune")]
    assert "4 cores cannot keep up" in warning and "train.prepared_store: true" in warning
    finetune = next(r for r in plan.rows if r.stage == "train@finetune")
    assert finetune.bound == "loader"
    # the same on 96 cores from the prepared store keeps up
    assert not [w for w in plan_of(full_recipe()).warnings if "loader-bound" in w]


def test_the_cpu_loader_without_workers_adds_to_the_step():
    params = load_params(REPO / "params.yaml")  # train.num_workers 0: the loader runs in the training process
    machine = cpu_machine(2, 10e9, 24 * 2**30, 5e9, "fixed")
    finetune = next(r for r in plan_of(params, machine=machine, mfu=0.7).rows if r.stage == "train@finetune")
    assert finetune.wall_s == pytest.approx(STARTUP_S + finetune.compute_s + finetune.loader_s)


def test_the_precision_follows_the_gpu():
    assert gpu_machine("t4", 1, 4).precision == "fp16" and gpu_machine("a100-40gb", 1, 4).precision == "bf16"
    assert gpu_machine("h100", 1, 4, "fp32").peak_flops < gpu_machine("h100", 1, 4).peak_flops / 10
