"""`guie train head` killed (SIGKILL) mid-run and run again ends with the uninterrupted run's bytes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import tiny_params_dict, write_params


def _guie(root: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # same threads in every run: same floats
    log = open(root / "stderr.log", "w")  # a file, not a pipe: a full pipe would stall the run
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "guie"), "train", "head", *args],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_weights(trained_project, tmp_path):
    _, layout = trained_project
    raw = tiny_params_dict()
    raw["train"].update(checkpoint_every=1)
    raw["train"]["stages"]["head"]["epochs"] = 3
    roots = {}
    for name in ("whole", "killed"):
        root = roots[name] = tmp_path / name
        shutil.copytree(layout.root / "data", root / "data")
        (root / "models").mkdir()
        shutil.copy(layout.weights, root / "models" / layout.weights.name)  # the backbone, not the trained stages
        write_params(root / "params.yaml", raw)

    whole = _guie(roots["whole"])
    assert whole.wait(timeout=300) == 0, (roots["whole"] / "stderr.log").read_text()

    killed = _guie(roots["killed"])
    checkpoint = roots["killed"] / "checkpoints" / "train_head" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL and not (roots["killed"] / "models" / "head.pt").exists()

    resumed = _guie(roots["killed"])
    assert resumed.wait(timeout=300) == 0
    assert "resuming from" in (roots["killed"] / "stderr.log").read_text()
    assert (roots["killed"] / "models" / "head.pt").read_bytes() == (roots["whole"] / "models" / "head.pt").read_bytes()
    assert not checkpoint.exists()
