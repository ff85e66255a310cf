"""The held-out monitor (each epoch's mP@5, and a soup's scoring): read in loader workers, from the
prepared-image store or decoded, with the same score either way."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from support import save_image_row, tiny_embedder

import guie.training.monitor
from guie.data.prepared import PreparedStore
from guie.runtime import Runtime
from guie.training.monitor import HeldoutMonitor, ImageSource


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    rng = np.random.default_rng(0)
    rows = []
    for c in range(4):
        base = rng.integers(0, 256, (3,))
        for i in range(3):
            pixels = np.clip(base + rng.integers(-40, 40, (30 + i, 41, 3)), 0, 255).astype(np.uint8)
            rows.append(save_image_row(root, f"h/{c}/{i}.png", Image.fromarray(pixels), f"c{c}", "cars", "heldout"))
    return root, rows


def _embedder():
    embedder = tiny_embedder(seed=1)
    embedder.tower.output_dim = 24  # what tower_dim reads from an open_clip tower
    return embedder


@pytest.mark.parametrize("stored", [False, True])
def test_the_monitor_reads_in_workers_from_the_store_or_decoding(tiny_params, heldout, monkeypatch, tmp_path, stored):
    root, rows = heldout
    params = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, num_workers=2))
    runtime = Runtime(torch.device("cpu"), None, False)
    workers = []
    real = guie.training.monitor.tower_features

    def recording(*args):
        workers.append(args[-1].num_workers)
        return real(*args)

    monkeypatch.setattr(guie.training.monitor, "tower_features", recording)
    embedder = _embedder()
    store = None
    if stored:
        store = PreparedStore(tmp_path / "prepared", embedder.preprocess)
        store.ensure(rows, root, workers=1)
    images = ImageSource(root=root, preprocess=embedder.preprocess)
    got = HeldoutMonitor(params, rows, dataclasses.replace(images, store=store), runtime, frozen_tower=False)(embedder)
    in_process = dataclasses.replace(params, train=dataclasses.replace(params.train, num_workers=0))
    expected = HeldoutMonitor(in_process, rows, images, runtime, frozen_tower=False)(embedder)

    assert workers == [2, 0]
    assert got == expected and 0 <= got <= 1
