import dataclasses
import json
import re

import pytest
import torch
from support import train_in

from guie.errors import GuieError
from guie.model.checkpoint import load_trained_embedder


def _with_stage(params, name, **changes):
    """`params` with train.stages.<name> changed."""
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, stages=stages))


def test_stages_write_checkpoints_and_dvclive_metrics(trained_project):
    params, layout = trained_project
    head = torch.load(layout.trained("head"), weights_only=True)
    ft = torch.load(layout.trained("finetune"), weights_only=True)
    assert head["stage"] == "head" and ft["stage"] == "finetune"
    assert (head["depth"], ft["depth"]) == (0, 1)
    assert head["classes"] == ft["classes"] and len(head["classes"]) == 24 - round(24 * 0.3)
    # stage 1 leaves the tower alone; stage 2 changes only the unfrozen blocks
    weights = torch.load(layout.weights, weights_only=True)["state_dict"]
    torch.testing.assert_close(head["tower"]["conv1.weight"], weights["visual.conv1.weight"])
    torch.testing.assert_close(ft["tower"]["conv1.weight"], weights["visual.conv1.weight"])
    last = "transformer.resblocks.3.mlp.c_fc.weight"
    assert not torch.equal(ft["tower"][last], weights[f"visual.{last}"])
    assert not torch.equal(ft["head"]["2.weight"], head["head"]["2.weight"])
    for stage in ("train_head", "train_finetune"):
        metrics = json.loads((layout.metrics(stage) / "metrics.json").read_text())
        assert {"loss", "heldout_mp5"} <= metrics.keys()
        assert (layout.metrics(stage) / "plots" / "metrics" / "loss.tsv").is_file()


def test_training_is_deterministic(trained_project, tmp_path):
    params, layout = trained_project
    again = tmp_path / "head.pt"
    train_in(params, layout, "head", out=again, metrics_dir=tmp_path / "m")
    assert again.read_bytes() == layout.trained("head").read_bytes()


def test_finetune_needs_stage_one(trained_project, tmp_path):
    params, layout = trained_project
    with pytest.raises(GuieError, match=re.escape("run `dvc repro train@head` (or `guie train head`)")):
        train_in(
            params,
            layout,
            "finetune",
            input_checkpoint=tmp_path / "none.pt",
            out=tmp_path / "o.pt",
            metrics_dir=tmp_path / "m",
        )


def test_trained_embedder_outputs_unit_head_features(trained_project):
    params, layout = trained_project
    emb = load_trained_embedder(params, layout.trained("finetune"), layout.weights)
    with torch.no_grad():
        out = emb(torch.randint(0, 256, (2, 3, 77, 300), dtype=torch.uint8))
    assert out.shape == (2, params.model.head_dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_zero_epochs_keep_the_starting_weights(trained_project, tmp_path):
    # epochs >= 0 by design: `train.stages.finetune.epochs: 0` exports the stage-1 model (an ablation)
    params, layout = trained_project
    params = _with_stage(params, "finetune", epochs=0)
    summary = train_in(
        params, layout, "finetune", out=tmp_path / "ft.pt", metrics_dir=tmp_path / "m", checkpoint=tmp_path / "c.pt"
    )
    head, ft = (torch.load(p, weights_only=True) for p in (layout.trained("head"), tmp_path / "ft.pt"))
    assert summary["epoch"] == 0
    for part in ("tower", "head", "margin"):
        assert head[part].keys() == ft[part].keys() and all(torch.equal(head[part][k], ft[part][k]) for k in head[part])
