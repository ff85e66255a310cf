"""Shared fixtures; plain helpers live in support.py."""

from __future__ import annotations

import os

from guie.threads import SHARED_CPU, process_env

# The suite runs one pytest-xdist worker per core, so every test shares the machine: guie's
# shared-CPU policy (a short OpenMP spin, guie/threads.py) before torch loads libgomp here, and for
# every process a test starts (they inherit the environment).
os.environ.update(process_env(os.environ | {SHARED_CPU: "1"}))

import pytest  # noqa: E402
import torch  # noqa: E402
from support import tiny_params_dict, train_in, write_params  # noqa: E402

torch.set_num_threads(1)  # tests run beside each other on 2 cores; no oversubscription


@pytest.fixture
def tiny_params():
    from guie.params.load import parse_params

    return parse_params(tiny_params_dict())


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """A tiny project taken through both training stages and PCA (built once per session)."""
    from guie.layout import Layout
    from guie.params.load import parse_params
    from guie.stages.download import download_sources
    from guie.stages.manifest import build_manifest
    from guie.stages.pca import PcaPaths, run_pca
    from guie.stages.weights import materialise_weights

    params = parse_params(tiny_params_dict())
    layout = Layout(tmp_path_factory.mktemp("trained"))
    download_sources(params, layout.root, layout.raw, layout.downloads_dir)
    materialise_weights(params.model, params.seed, layout.weights)
    build_manifest(params, layout.root, layout.raw, layout.manifest, layout.rejected, workers=1)
    train_in(params, layout, "head")
    train_in(params, layout, "finetune")
    run_pca(params, PcaPaths.in_layout(layout, params))
    return params, layout


@pytest.fixture
def trained_copy(trained_project, tmp_path):
    """A copy of the trained tiny project (no resume checkpoints), with its params.yaml: for `guie` commands."""
    import shutil

    _, layout = trained_project
    root = tmp_path / "p"
    shutil.copytree(layout.root, root, ignore=shutil.ignore_patterns("checkpoints"))
    write_params(root / "params.yaml", tiny_params_dict())
    return root
