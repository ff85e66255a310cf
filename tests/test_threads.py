"""The thread policy: OpenMP settings every `guie` process starts with, and numerics that do not
depend on how many threads the machine or the environment offers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import tiny_params_dict, write_params

from guie.layout import Layout
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest
from guie.stages.weights import materialise_weights
from guie.threads import NUMERICS_THREADS, SPIN_COUNT, fixed_numerics, numerics_threads, process_env


@pytest.mark.parametrize(
    ("environ", "added"),
    [
        ({}, {}),  # idle machines keep torch's spin: a short one costs 1.6x alone
        ({"PATH": "/bin", "GUIE_SHARED_CPU": "0"}, {}),
        ({"GUIE_SHARED_CPU": "1"}, {"GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"GUIE_SHARED_CPU": "1", "GOMP_SPINCOUNT": "5"}, {}),  # the user's own setting wins
        ({"GUIE_SHARED_CPU": "1", "OMP_WAIT_POLICY": "PASSIVE"}, {}),  # so does a wait policy
    ],
)
def test_process_env_adds_the_spin_count_on_a_shared_machine_unless_the_user_set_one(environ, added):
    env = process_env(environ)
    assert env == environ | added
    assert process_env(env) == env  # applied twice: unchanged (the CLI re-executes until it is)


def test_numerics_run_at_the_fixed_count_and_the_callers_count_comes_back():
    torch.set_num_threads(1)
    seen = []
    stage = fixed_numerics(lambda: seen.append(torch.get_num_threads()) or "out")
    assert stage() == "out" and seen == [NUMERICS_THREADS]
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="a stage failed"), numerics_threads():
        raise RuntimeError("a stage failed")
    assert torch.get_num_threads() == 1


def _train_head(root: Path, env: dict[str, str], patch_threads: int | None = None) -> bytes:
    """`guie train head` in a fresh interpreter with `env`; with `patch_threads`, NUMERICS_THREADS is
    replaced first (the control: what the fixed count guards against)."""
    if patch_threads is None:
        cmd = [str(Path(sys.executable).parent / "guie"), "train", "head", "--fresh"]
    else:
        code = (
            f"import sys, guie.threads; guie.threads.NUMERICS_THREADS = {patch_threads}; "
            "sys.argv = ['guie', 'train', 'head', '--fresh']; from guie.cli import main; main()"
        )
        cmd, env = [sys.executable, "-c", code], process_env(env) | {"PYTHONHASHSEED": "0"}  # no re-exec: patch kept
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (root / "models" / "head.pt").read_bytes()


def test_a_training_stage_gives_the_same_bytes_with_1_and_2_threads(tiny_params, tmp_path):
    layout = Layout(tmp_path)
    download_sources(tiny_params, layout.root, layout.raw, layout.downloads_dir)
    materialise_weights(tiny_params.model, tiny_params.seed, layout.weights)
    build_manifest(tiny_params, layout.root, layout.raw, layout.manifest, layout.rejected, workers=1)
    write_params(layout.root / "params.yaml", tiny_params_dict())
    root = layout.root
    base = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")} | {"CUDA_VISIBLE_DEVICES": ""}

    one = _train_head(root, base | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    two = _train_head(root, base | {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    assert one == two
    # the stage's floats do depend on the count: without the fixed count the bytes would differ
    assert _train_head(root, base, patch_threads=1) != two
