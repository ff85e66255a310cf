"""Stages beyond the default two: a head-frozen tower stage, SGD at the 1st place's lr ratio with a
warm-up and cosine schedule, and how the margin head's class weights carry between stages."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from support import train_in

from guie.errors import GuieError
from guie.model.loss import MarginLoss
from guie.params.train import StageParams
from guie.training.model import _carry_margin
from guie.training.optimisation import LrSchedule


def _with_stages(params, **entries):
    """`params` with these entries appended to train.stages (the last one final)."""
    stages = {**params.train.stages, **entries}
    return dataclasses.replace(params, train=dataclasses.replace(params.train, stages=stages, final=list(stages)[-1]))


def _metrics(metrics_dir: Path) -> dict:
    return json.loads((metrics_dir / "metrics.json").read_text())


def test_a_head_frozen_stage_trains_the_tower_and_leaves_the_head_and_margin_head_untouched(trained_project, tmp_path):
    params, layout = trained_project
    params = _with_stages(
        params, tower=StageParams(from_="finetune", epochs=1, tower="all", head="frozen", lr_backbone=1e-3)
    )
    out = tmp_path / "tower.pt"
    train_in(params, layout, "tower", out=out, metrics_dir=tmp_path / "m", checkpoint=tmp_path / "ck" / "last.pt")
    before = torch.load(layout.trained("finetune"), weights_only=True)
    after = torch.load(out, weights_only=True)
    assert after["depth"] == 2 and after["stage"] == "tower"
    for part in ("head", "margin"):  # weights and BatchNorm statistics alike
        assert before[part].keys() == after[part].keys()
        for key in before[part]:
            assert torch.equal(before[part][key], after[part][key]), (part, key)
    assert not torch.equal(before["tower"]["conv1.weight"], after["tower"]["conv1.weight"])  # tower: all
    assert set(_metrics(tmp_path / "m")["lr"]) == {"backbone"}  # no head group


def test_sgd_at_the_first_places_lr_ratio_with_a_warm_up_and_cosine_schedule_logs_its_rates(trained_project, tmp_path):
    params, layout = trained_project
    stage = StageParams(
        from_="finetune",
        epochs=2,
        tower="blocks",
        unfreeze_from=3,
        optimizer="sgd",
        lr_head=8e-3,
        lr_backbone=1e-4,  # head lr / 80, the 1st place's ratio
        schedule="cosine",
        warmup_steps=2,
    )
    params = _with_stages(params, sgd=stage)
    train_in(params, layout, "sgd", out=tmp_path / "sgd.pt", metrics_dir=tmp_path / "m", checkpoint=tmp_path / "c.pt")
    logged = (tmp_path / "m" / "plots" / "metrics" / "lr").glob("*.tsv")
    rates = {p.stem: [float(line.split("\t")[-1]) for line in p.read_text().splitlines()[1:]] for p in logged}
    head, backbone = rates["head"], rates["backbone"]
    assert len(head) == 2 and all(h / b == pytest.approx(80) for h, b in zip(head, backbone, strict=True))
    # logged at each epoch end: the rate of that epoch's last step on the schedule
    total = _steps_per_epoch(layout, params) * 2
    schedule = LrSchedule("cosine", 2, total)
    assert head[0] == pytest.approx(8e-3 * schedule.factor(total // 2 - 1))
    assert head[1] == pytest.approx(8e-3 * schedule.factor(total - 1))


def _steps_per_epoch(layout, params) -> int:
    from guie.data.manifest import read_manifest

    n = sum(r.split == "train" for r in read_manifest(layout.manifest))
    return n // params.train.batch_size if n > params.train.batch_size else 1


def _margin(classes: list[str], subcenters: int = 2, seed: int = 0) -> MarginLoss:
    torch.manual_seed(seed)
    return MarginLoss(4, torch.full((len(classes),), 0.3), subcenters)


@pytest.mark.parametrize("policy", ["keep", "extend", "reinit"])
def test_the_margin_heads_class_weights_carry_over_as_the_stage_says(policy):
    before = _margin(["a", "b", "c"], seed=1)
    state = {"classes": ["a", "b", "c"], "margin": before.state_dict()}
    stage = StageParams(from_="x", epochs=1, margin_head=policy)
    same = _margin(["a", "b", "c"])
    fresh = same.weight.detach().clone()
    _carry_margin(same, ["a", "b", "c"], state, stage, "train.stages.s", Path("x.pt"))
    assert torch.equal(same.weight, before.weight if policy != "reinit" else fresh)

    grown = _margin(["a", "c", "d"])  # b dropped, d new
    fresh = grown.weight.detach().clone()
    if policy == "keep":
        with pytest.raises(GuieError, match=r"train.stages.s.margin_head: keep needs the classes x.pt .*extend"):
            _carry_margin(grown, ["a", "c", "d"], state, stage, "train.stages.s", Path("x.pt"))
        return
    _carry_margin(grown, ["a", "c", "d"], state, stage, "train.stages.s", Path("x.pt"))
    rows = lambda w, i: w[i * 2 : (i + 1) * 2]  # noqa: E731  (k = 2 sub-centres per class)
    if policy == "extend":
        assert torch.equal(rows(grown.weight, 0), rows(before.weight, 0))  # a
        assert torch.equal(rows(grown.weight, 1), rows(before.weight, 2))  # c
        assert torch.equal(rows(grown.weight, 2), rows(fresh, 2))  # d: initialised
    else:
        assert torch.equal(grown.weight, fresh)


def test_keeping_class_weights_needs_the_same_sub_centre_count():
    state = {"classes": ["a", "b"], "margin": _margin(["a", "b"], subcenters=3).state_dict()}
    with pytest.raises(GuieError, match=r"loss.subcenters is 2; set margin_head: reinit"):
        _carry_margin(_margin(["a", "b"]), ["a", "b"], state, StageParams(from_="x", epochs=1), "k", Path("x.pt"))
