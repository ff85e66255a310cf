"""A `guie manifest` killed with SIGKILL takes its decoding workers with it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import crafted
import pytest
from support import REPO, tiny_params_dict, write_params

from guie.layout import Layout
from guie.stages.download import download_sources

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
DEADLINE_S = 60.0  # generous: the workers die at once; this only bounds a broken run

# Runs build_manifest with 2 workers; a thread SIGKILLs the process as soon as both workers exist
# (so the kill always lands while the pool is working) after writing their pids to a file.
DRIVER = """
import multiprocessing, os, signal, sys, threading, time
from pathlib import Path
from guie.params.load import load_params
from guie.stages.manifest import build_manifest
from guie.layout import Layout

def kill_when_the_workers_run():
    while True:
        try:
            workers = multiprocessing.active_children()
        except RuntimeError:  # the pool changed its set of children meanwhile
            continue
        if len(workers) == 2:
            Path(sys.argv[3]).write_text(" ".join(str(w.pid) for w in workers))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)

threading.Thread(target=kill_when_the_workers_run, daemon=True).start()
root = Path(sys.argv[2])
layout = Layout(root)
build_manifest(load_params(sys.argv[1]), root, layout.raw, layout.manifest, layout.rejected, workers=2)
sys.exit(3)  # finished before both workers were seen
"""


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if option == PR_GET_CHILD_SUBREAPER:
        out = ctypes.c_int()
        libc.prctl(option, ctypes.byref(out), 0, 0, 0)
        return out.value
    return libc.prctl(option, arg, 0, 0, 0)


def _reap(pid: int) -> bool:
    """True once `pid` is dead (and reaped, when it is ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not (or no longer) our child: look it up
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses prctl")
def test_killing_the_manifest_kills_its_workers(tmp_path, params_with):
    crafted.write_class_folder(tmp_path / "a", {f"c{i}": 8 for i in range(40)}, seed=1, size=(128, 96))
    crafted.write_class_folder(tmp_path / "p", {"p": 40}, seed=2, size=(128, 96))
    raw = tiny_params_dict()
    raw["data"]["sources"] = [
        {"name": "a", "type": "folder", "path": str(tmp_path / "a"), "domain": "toys"},
        {"name": "p", "type": "folder", "path": str(tmp_path / "p"), "domain": "meme", "role": "pca"},
    ]
    params_file = write_params(tmp_path / "params.yaml", raw)
    download_sources(
        params_with(raw["data"]["sources"]), tmp_path, Layout(tmp_path).raw, Layout(tmp_path).downloads_dir
    )

    pid_file = tmp_path / "workers.txt"
    was_subreaper = _prctl(PR_GET_CHILD_SUBREAPER)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphaned workers come to this process, which can reap them
    alive: set[int] = set()  # worker pids not yet seen dead
    try:
        # output to a file, not a pipe: surviving workers would hold a pipe open and hang the wait
        with (tmp_path / "driver.log").open("w") as log:
            driver = subprocess.run(
                [sys.executable, "-c", DRIVER, str(params_file), str(tmp_path), str(pid_file)],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        alive = {int(pid) for pid in pid_file.read_text().split()} if pid_file.exists() else set()
        assert driver.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
        assert len(alive) == 2
        deadline = time.monotonic() + DEADLINE_S
        while alive and time.monotonic() < deadline:
            alive = {pid for pid in alive if not _reap(pid)}
            time.sleep(0.05)
        assert not alive, f"workers {sorted(alive)} outlived their killed parent"
    finally:
        for pid in alive:  # a broken run must not leave them behind either
            if not _reap(pid):
                os.kill(pid, signal.SIGKILL)
                _reap_blocking(pid)
        _prctl(PR_SET_CHILD_SUBREAPER, was_subreaper)


def _reap_blocking(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
