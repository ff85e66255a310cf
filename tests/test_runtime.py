"""Where training computes: device and precision choices fail early with the knob to change."""

import dataclasses

import pytest
import torch
from support import train_in

from guie.errors import GuieError
from guie.runtime import Runtime, gather_shards, training_runtime


def _train(params, **changes):
    return dataclasses.replace(params.train, **changes)


def test_cpu_runs_float32_and_auto_picks_the_cpu_without_a_gpu(tiny_params, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with training_runtime(_train(tiny_params, device="auto", precision="auto")) as runtime:
        assert runtime.device.type == "cpu" and runtime.amp_dtype is None and not runtime.channels_last
        assert (runtime.rank, runtime.world, runtime.main) == (0, 1, True)
        assert runtime.describe == "cpu fp32"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(device="cuda"), "train.device is cuda but no GPU is visible"),
        (dict(device="cpu", precision="fp16"), "train.precision: fp16 needs a GPU"),
    ],
)
def test_impossible_compute_settings_name_the_knob(tiny_params, monkeypatch, changes, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GuieError, match=message):
        with training_runtime(_train(tiny_params, **changes)):
            pass


def test_the_global_batch_must_split_evenly_between_processes(tiny_params, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(GuieError, match="train.batch_size 16 must be a multiple of the 3 processes"):
        with training_runtime(_train(tiny_params, device="cpu")):
            pass


def test_single_process_shards_are_the_rows_themselves():
    rows = torch.arange(12.0).view(6, 2)
    assert gather_shards(Runtime(torch.device("cpu"), None, False), rows, 6) is rows


def test_stage_one_trains_under_cpu_bf16_autocast(trained_project, tmp_path):
    """The mixed-precision path (autocast, float32 loss sums, cached features cast back) on a CPU."""
    params, layout = trained_project
    params = dataclasses.replace(params, train=_train(params, device="cpu", precision="bf16"))
    summary = train_in(params, layout, "head", out=tmp_path / "bf16.pt", metrics_dir=tmp_path / "m")
    assert summary["compute"] == "cpu bf16"
    assert torch.isfinite(torch.tensor(summary["loss"])) and 0 <= summary["heldout_mp5"] <= 1
    head = torch.load(tmp_path / "bf16.pt", weights_only=True)["head"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in head.values())  # weights stay float32
    assert not torch.equal(head["2.weight"], torch.load(layout.trained("head"), weights_only=True)["head"]["2.weight"])


def test_pca_on_a_missing_gpu_names_pca_device_before_any_work(trained_project, tmp_path, monkeypatch):
    from guie.stages.pca import PcaPaths, run_pca

    params, layout = trained_project
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = dataclasses.replace(params, pca=dataclasses.replace(params.pca, device="cuda"))
    with pytest.raises(GuieError, match="pca.device is cuda but no GPU is visible; set pca.device: auto or cpu"):
        paths = dataclasses.replace(PcaPaths.in_layout(layout, params), out=tmp_path / "pca.pt", plots_dir=tmp_path)
        run_pca(params, paths)
    assert not (tmp_path / "pca.pt").exists()
