"""The GPU training path, on a machine with one (skipped elsewhere): mixed precision, channels-last,
pinned loaders, the deferred NaN check, and checkpoints that load on a CPU."""

import dataclasses

import pytest
import torch
from support import Interrupted, interrupt_after_saves, nan_loss_at_call, train_in

import guie.model.checkpoint
from guie.errors import GuieError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _on_gpu(params, precision, **changes):
    train = dataclasses.replace(params.train, device="cuda", precision=precision, **changes)
    return dataclasses.replace(params, train=train)


def _with_stage(params, name, **changes):
    """`params` with train.stages.<name> changed."""
    stages = dict(params.train.stages)
    stages[name] = dataclasses.replace(stages[name], **changes)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, stages=stages))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_both_stages_train_on_the_gpu_and_their_checkpoints_load_on_a_cpu(trained_project, tmp_path, precision):
    params, layout = trained_project
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    params = _on_gpu(params, precision)
    head = train_in(params, layout, "head", out=tmp_path / "head.pt", metrics_dir=tmp_path / "m1")
    tuned = train_in(
        params,
        layout,
        "finetune",
        input_checkpoint=tmp_path / "head.pt",
        out=tmp_path / "ft.pt",
        metrics_dir=tmp_path / "m2",
    )
    for summary in (head, tuned):
        assert summary["compute"] == f"cuda {precision}"
        assert torch.isfinite(torch.tensor(summary["loss"])) and 0 <= summary["heldout_mp5"] <= 1
    state = torch.load(tmp_path / "ft.pt", weights_only=True)  # no map_location: saved as CPU tensors
    assert all(v.device.type == "cpu" for part in ("tower", "head", "margin") for v in state[part].values())
    embedder = guie.model.checkpoint.load_trained_embedder(params, tmp_path / "ft.pt", layout.weights)
    with torch.no_grad():
        out = embedder(torch.randint(0, 256, (2, 3, 64, 80), dtype=torch.uint8))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_gpu_nan_check_runs_every_sync_every_steps_and_names_the_first_bad_step(trained_project, tmp_path, monkeypatch):
    params, layout = trained_project
    params = _with_stage(_on_gpu(params, "fp32", sync_every=3), "head", cached_views=0)
    calls = nan_loss_at_call(monkeypatch, 2)
    with pytest.raises(GuieError, match="loss became nan at epoch 1 step 2 "):
        train_in(
            params,
            layout,
            "head",
            out=tmp_path / "o.pt",
            metrics_dir=tmp_path / "m",
            checkpoint=tmp_path / "c.pt",
            feature_cache=tmp_path / "features.pt",
        )
    assert len(calls) == 3  # read back at step 3, not at every step


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gpu_run_interrupted_after_a_checkpoint_resumes_and_finishes(trained_project, tmp_path, monkeypatch, precision):
    # the resume checkpoint holds GPU optimizer state, the fp16 loss scaler and CUDA's RNG state
    params, layout = trained_project
    params = _with_stage(_on_gpu(params, precision, checkpoint_every=3), "finetune", epochs=2)
    checkpoint = tmp_path / "ckpt.pt"
    paths = dict(out=tmp_path / "ft.pt", metrics_dir=tmp_path / "m", checkpoint=checkpoint)
    with monkeypatch.context() as m:
        interrupt_after_saves(m, 1)
        with pytest.raises(Interrupted):
            train_in(params, layout, "finetune", **paths)
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 3
    summary = train_in(params, layout, "finetune", **paths)
    assert summary["compute"] == f"cuda {precision}" and torch.isfinite(torch.tensor(summary["loss"]))
    assert not checkpoint.exists() and (tmp_path / "ft.pt").is_file()
