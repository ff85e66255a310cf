"""Resumable training: a run interrupted after a checkpoint and resumed ends byte-identical to an
uninterrupted one; non-finite losses and OOM stop with actionable messages."""

import dataclasses

import pytest
import torch
from support import Interrupted, interrupt_after_saves, nan_loss_at_call, train_in

import guie.training.loop
import guie.training.nonfinite
import guie.training.spec
from guie.errors import GuieError


def _with_train(params, **changes):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **changes))


def _with_stage(params, name, **changes):
    """`params` with train.stages.<name> changed."""
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return _with_train(params, stages=stages)


def _two_epochs(params):
    params = _with_train(params, checkpoint_every=3)  # mid-epoch at step 3, plus every epoch end
    return _with_stage(_with_stage(params, "head", epochs=2), "finetune", epochs=2)


def _run(stage, params, layout, out, metrics, checkpoint, fresh=False):
    return train_in(
        params,
        layout,
        stage,
        fresh=fresh,
        out=out,
        metrics_dir=metrics,
        checkpoint=checkpoint,
        feature_cache=checkpoint.with_name("features.pt"),
    )


@pytest.mark.parametrize("stage", ["head", "finetune"])
def test_interrupted_run_resumes_to_identical_weights_and_metrics(stage, trained_project, tmp_path, monkeypatch):
    params, layout = trained_project
    params = _two_epochs(params)
    _run(stage, params, layout, tmp_path / "whole.pt", tmp_path / "m_whole", tmp_path / "whole_ckpt.pt")
    assert not (tmp_path / "whole_ckpt.pt").exists()  # a finished run leaves no resume checkpoint

    checkpoint = tmp_path / "ckpt.pt"
    with monkeypatch.context() as m:
        interrupt_after_saves(m, 1)
        with pytest.raises(Interrupted):
            _run(stage, params, layout, tmp_path / "resumed.pt", tmp_path / "m_resumed", checkpoint)
    progress = torch.load(checkpoint, weights_only=True)["progress"]
    assert (progress["epoch"], progress["step"]) == (0, 3)  # stopped mid-epoch
    # the resumed run may read views from the prepared-image store or not: the same views either way
    _run(
        stage,
        _with_train(params, prepared_store=not params.train.prepared_store),
        layout,
        tmp_path / "resumed.pt",
        tmp_path / "m_resumed",
        checkpoint,
    )

    assert (tmp_path / "resumed.pt").read_bytes() == (tmp_path / "whole.pt").read_bytes()
    for name in ("metrics.json", "plots/metrics/loss.tsv", "plots/metrics/heldout_mp5.tsv"):
        assert (tmp_path / "m_resumed" / name).read_text() == (tmp_path / "m_whole" / name).read_text()
    assert not checkpoint.exists()


def test_checkpoint_from_other_params_is_not_resumed_and_fresh_ignores_one(
    trained_project, tmp_path, monkeypatch, capsys
):
    params, layout = trained_project
    params = _two_epochs(params)
    checkpoint = tmp_path / "ckpt.pt"
    with monkeypatch.context() as m:
        interrupt_after_saves(m, 2)  # after epoch 1
        with pytest.raises(Interrupted):
            _run("head", params, layout, tmp_path / "a.pt", tmp_path / "m", checkpoint)
    other = _with_stage(params, "head", lr_head=params.train.stages["head"].lr_head / 2)
    with monkeypatch.context() as m:
        calls = interrupt_after_saves(m, 1)
        with pytest.raises(Interrupted):
            _run("head", other, layout, tmp_path / "b.pt", tmp_path / "m2", checkpoint)
    assert "starting fresh" in capsys.readouterr().err
    assert torch.load(calls[0], weights_only=True)["progress"]["step"] == 3  # trained from the start again

    with monkeypatch.context() as m:
        interrupt_after_saves(m, 1)
        with pytest.raises(Interrupted):
            _run("head", other, layout, tmp_path / "b.pt", tmp_path / "m3", checkpoint, fresh=True)
    assert "--fresh" in capsys.readouterr().err
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 3


def test_non_finite_loss_stops_with_step_lr_and_batch_and_keeps_the_last_good_checkpoint(
    trained_project, tmp_path, monkeypatch
):
    params, layout = trained_project
    params = _with_train(params, checkpoint_every=2)
    checkpoint = tmp_path / "ckpt.pt"
    nan_loss_at_call(monkeypatch, 3)
    with pytest.raises(GuieError) as err:
        _run("head", params, layout, tmp_path / "o.pt", tmp_path / "m", checkpoint)
    message = str(err.value)
    lr_head = params.train.stages["head"].lr_head
    assert "loss became nan at epoch 1 step 3" in message and f"lr/head {lr_head:g}" in message
    assert "data/raw/" in message and str(checkpoint) in message and "train." in message
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 2
    assert not (tmp_path / "o.pt").exists()


def test_out_of_memory_names_the_batch_size_and_precision_knobs(trained_project, tmp_path, monkeypatch):
    params, layout = trained_project

    def oom(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(guie.training.loop.BatchLoss, "forward", oom)
    with pytest.raises(
        GuieError,
        match=f"train.batch_size {params.train.batch_size} .*lower train.batch_size, "
        "set train.precision to bf16.*train.stages.finetune.unfreeze_from",
    ):
        _run("finetune", params, layout, tmp_path / "o.pt", tmp_path / "m", tmp_path / "ckpt.pt")


def test_a_deferred_non_finite_check_names_the_first_bad_step_and_its_whole_batch(tiny_params, tmp_path):
    """On a GPU the loop checks every train.sync_every steps; the step it reports is still the first bad one."""
    from guie.data.dataset import EpochBatches
    from guie.data.manifest import ManifestRow

    rows = [
        ManifestRow(
            path=f"data/raw/s/{i}.jpg",
            sha256="",
            source="s",
            domain="d",
            label=f"c{i}",
            split="train",
            width=1,
            height=1,
        )
        for i in range(8)
    ]
    batches = EpochBatches(8, 4, seed=0, drop_last=True, rank=1, world=2)  # this process sees half of each batch
    batches.set_epoch(0)
    watch = guie.training.nonfinite.NonFiniteWatch(torch.device("cpu"))
    for step, value in enumerate([1.0, float("inf")]):
        watch.observe(torch.tensor(value), step)
    watch.observe(torch.tensor(float("nan")), 2)
    spec = guie.training.spec.RunSpec(
        stage="head",
        train_rows=rows,
        heldout=[],
        seed=0,
        epochs=1,
        tower_trains=False,
        head_trains=True,
        cached_views=0,
        schedule="constant",
        warmup_steps=0,
        fingerprint="f",
        fresh=False,
        project_root=tmp_path,
        prepared_root=None,
        out=tmp_path / "head.pt",
        metrics_dir=tmp_path / "metrics",
        checkpoint=tmp_path / "ckpt.pt",
        feature_cache=None,
    )
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(GuieError) as err:
        watch.check(spec, 0, batches, optimizer)
    message = str(err.value)
    assert "loss became inf at epoch 1 step 2 (lr/0 0.5)" in message and "no checkpoint was written yet" in message
    assert sorted(message.split("images: ")[1].split(", ")) == sorted(rows[i].path for i in batches.global_batch(1))
