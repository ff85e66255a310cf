"""guie/verification/child.py on its own: run by path, it talks JSON lines on its channel only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hostile import Prints, archive_bytes

from guie.verification import child
from guie.verification.harness import CHILD, _message


def _run_child(tmp_path, module, fence_files: bool) -> tuple[list[dict], str]:
    (tmp_path / "work").mkdir()
    model = tmp_path / "model.pt"
    model.write_bytes(archive_bytes(module))
    inputs = {"a": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "b": torch.full((1, 3, 5, 2), 9, dtype=torch.uint8)}
    torch.save(inputs, tmp_path / "work" / "inputs.pt")
    read_end, write_end = os.pipe()
    config = {
        "model": str(model),
        "workdir": str(tmp_path / "work"),
        "inputs": str(tmp_path / "work" / "inputs.pt"),
        "outputs": str(tmp_path / "work" / "outputs.pt"),
        "timing_calls": 0,
        "timing_size": [8, 8],
        "count_flops": False,
        "guie_root": "",
        "memory_headroom": 1 << 30,
        "fence_files": fence_files,
        "parent_pid": os.getpid(),
        "channel_fd": write_end,
    }
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(config)], stdout=subprocess.PIPE, pass_fds=(write_end,), text=True
    )
    os.close(write_end)
    with os.fdopen(read_end) as channel:
        messages = [json.loads(line) for line in channel]
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return messages, stdout


@pytest.mark.parametrize("fence_files", [True, False])
def test_the_child_reports_each_step_on_its_channel_and_the_model_prints_to_stdout(tmp_path, fence_files):
    messages, stdout = _run_child(tmp_path, Prints(), fence_files)
    assert [m["step"] for m in messages] == ["load", "call a", "call b", "done"]
    assert messages[-1]["errors"] == {}
    assert "hello from the model" in stdout  # the model's lines went to stdout, never to the channel
    files = messages[0]["fence"]["files"]
    assert files.startswith("Landlock" if fence_files and child.landlock_abi()[0] else "not fenced")
    outputs = torch.load(tmp_path / "work" / "outputs.pt")
    assert set(outputs) == {"a", "a#again", "b", "b#again"} and outputs["a"].shape == (1, 64)


def test_landlock_probe_gives_an_abi_or_a_reason():
    abi, why = child.landlock_abi()
    assert (abi > 0 and why == "") or (abi == 0 and why)


def test_errors_are_one_line_with_their_cause():
    assert child.describe(RuntimeError("Traceback:\n  at x\nRuntimeError: boom"), at_load=False) == "RuntimeError: boom"
    assert child.describe(ValueError("bad\nthing"), at_load=True) == "ValueError: bad thing"


def test_the_parent_ignores_anything_but_an_expected_step_once():
    expected = {"load", "call a", "done"}
    assert _message(b"1\n", expected) is None  # what `print(x.shape[0])` wrote
    assert _message(b"not json\n", expected) is None
    assert _message(b'{"step": "call zzz"}\n', expected) is None
    assert _message(b'{"step": "call a"}\n', expected) == {"step": "call a"}
    assert _message(b'{"step": "call a"}\n', expected) is None  # a step's clock is never reset twice
