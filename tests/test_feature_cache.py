"""Stage 1's feature cache: the frozen tower runs once per image and view, and a cache with one
view per epoch trains exactly what recomputing the tower every epoch trains."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import free_port, train_in

import guie.feature_cache
import guie.training.loop
from guie.data.dataset import EpochBatches
from guie.feature_cache import cache_items


def _head_params(params, epochs, views):
    stages = dict(params.train.stages)
    stages["head"] = dataclasses.replace(stages["head"], epochs=epochs, cached_views=views)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, stages=stages))


def test_view_v_of_an_image_is_the_view_epoch_v_draws_for_it():
    items = cache_items(n=10, seed=3, views=2)
    assert [i for i, _ in items] == list(range(10)) * 2
    for epoch in range(2):
        batches = EpochBatches(10, 4, seed=3, drop_last=False)
        batches.set_epoch(epoch)
        drawn = dict(pair for batch in batches for pair in batch)
        assert items[epoch * 10 : (epoch + 1) * 10] == sorted(drawn.items())


def test_one_cached_view_per_epoch_trains_what_recomputing_the_tower_trains(trained_project, tmp_path):
    params, layout = trained_project
    outs = {}
    for views in (0, 2):
        outs[views] = tmp_path / f"views{views}.pt"
        train_in(_head_params(params, 2, views), layout, "head", out=outs[views], metrics_dir=tmp_path / f"m{views}")
    recomputed, cached = (torch.load(outs[v], weights_only=True) for v in (0, 2))
    # the tower ran on other batch compositions: float summation order only
    torch.testing.assert_close(cached["head"], recomputed["head"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached["margin"], recomputed["margin"], rtol=1e-4, atol=1e-5)
    for m in ("m0", "m2"):
        assert (tmp_path / m / "plots" / "metrics" / "loss.tsv").read_text().count("\n") == 3  # header + 2 epochs


def test_the_tower_runs_once_per_image_and_view_and_a_resumed_run_reuses_the_cache(
    trained_project, tmp_path, monkeypatch
):
    params, layout = trained_project
    calls = []
    # every tower pass, the cache's and the held-out monitor's, runs this process's share through it
    real_pass, real_save = guie.feature_cache._own_shard, guie.training.loop.save_checkpoint

    def counting(tower, dataset, items, *args, **kwargs):
        calls.append(len(items))
        return real_pass(tower, dataset, items, *args, **kwargs)

    def killed_after_first_save(*args):
        real_save(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(guie.feature_cache, "_own_shard", counting)
    checkpoint = tmp_path / "ckpt" / "last.pt"
    n_train = sum(1 for line in layout.manifest.read_text().splitlines() if ",train," in line)

    def run():
        return train_in(
            _head_params(params, 3, 2),
            layout,
            "head",
            out=tmp_path / "a.pt",
            metrics_dir=tmp_path / "m",
            checkpoint=checkpoint,
            feature_cache=checkpoint.with_name("features.pt"),
        )

    with monkeypatch.context() as m:
        m.setattr(guie.training.loop, "save_checkpoint", killed_after_first_save)
        try:
            run()
        except KeyboardInterrupt:
            pass
    assert len(calls) == 2 and calls[0] == 2 * n_train  # the cache (every image, 2 views), then the held-out set once
    assert (tmp_path / "ckpt" / "features.pt").is_file()
    calls.clear()
    run()
    assert len(calls) == 1  # resumed: the cache is read back, only the held-out set is embedded (once for all epochs)
    assert not (tmp_path / "ckpt" / "features.pt").exists()  # removed with the resume checkpoint when done


@pytest.mark.slow  # ~35 s of CPU: four processes importing torch and open_clip, and a 256 MiB cache
def test_four_processes_share_one_copy_of_the_feature_cache(tmp_path):
    """Each process of a 4-process run reads every cached feature, and together they hold the
    features once: the cache file's pages are the page cache's, mapped by all four (their summed
    proportional share is one copy, and none of them copied the features into private memory)."""
    n, views, dim = 32768, 2, 1024  # a 256 MiB cache
    size = n * views * dim * 4
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="4")
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # freed buffers go back to the system: anonymous memory is held memory
    worker = Path(__file__).with_name("cache_sharing_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp_path), str(n), str(views), str(dim)],
            env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r in range(4)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]

    import cache_sharing_worker as w

    expected = w.Tower(dim)(w.view_inputs(*torch.tensor(cache_items(n, 3, views)).T)).detach().view(views, n, dim)
    cache = guie.feature_cache.ViewCache(path=tmp_path / "features.pt", fingerprint="f" * 16, seed=3, views=views)
    torch.testing.assert_close(guie.feature_cache.read_view_cache(cache), expected)  # gathered in the right order
    for report in reports:
        assert report["sum"] == pytest.approx(float(expected.double().sum()), rel=1e-6)  # each read everything
        assert report["mapping"]["Rss"] >= 0.95 * size  # ... and has every page of the file mapped
        assert report["mapping"]["Private_Dirty"] < 0.01 * size and report["mapping"]["holds_features"]
    assert sum(r["mapping"]["Pss"] for r in reports) <= 1.1 * size  # one copy between the four
    assert sum(r["anon_growth"] for r in reports) < 0.25 * size  # no process kept a copy of its own
