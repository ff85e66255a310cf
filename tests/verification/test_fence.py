"""verify runs someone else's model: each way it can misbehave, fenced (issue 24)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hostile import (
    Allocates,
    Constant,
    Good,
    NeverReturns,
    Prints,
    PrintsForever,
    ReadsAFile,
    WritesAFile,
    archive_bytes,
    encrypted,
    submission,
    with_record,
)
from support import REPO, host_call_children
from typer.testing import CliRunner

from guie.cli import app
from guie.stages.export import zip_model
from guie.stages.verify import VerifyLimits, verify_submission
from guie.torchscript_archive import MAX_CODE_RECORD_BYTES, MAX_PICKLE_BYTES, legacy_problems, tensor_placements
from guie.verification.child import landlock_abi

LANDLOCK, NO_LANDLOCK = landlock_abi()
needs_landlock = pytest.mark.skipif(not LANDLOCK, reason=f"no file fence here: {NO_LANDLOCK}")


def _failed(report) -> set[str]:
    return {c.name for c in report.checks if not c.passed}


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


@needs_landlock
@pytest.mark.parametrize("exists", [False, True])
def test_a_model_cannot_create_or_overwrite_a_file(tmp_path, exists):
    target = tmp_path / "outside" / "pwned"
    target.parent.mkdir()
    if exists:
        target.write_bytes(b"keep these bytes" * 2)
    report = verify_submission(submission(tmp_path / "s.zip", WritesAFile(str(target))), estimate_time=False)
    assert "call 1x1" in _failed(report) and "Permission denied" in _check(report, "call 1x1").detail
    assert target.read_bytes() == b"keep these bytes" * 2 if exists else not target.exists()
    assert "Landlock" in _check(report, "fence").detail


@needs_landlock
def test_a_model_cannot_read_a_file_outside_the_artifact(tmp_path):
    secret = tmp_path / "kaggle.json"
    secret.write_text('{"key": "s3cr3t"}')
    report = verify_submission(submission(tmp_path / "s.zip", ReadsAFile(str(secret))), estimate_time=False)
    assert "call 1x1" in _failed(report) and "Permission denied" in _check(report, "call 1x1").detail


def test_what_a_model_prints_is_ignored(tmp_path):
    # `print(x.shape[0])` wrote a bare int on verify's old protocol channel (stdout) and crashed it
    report = verify_submission(submission(tmp_path / "s.zip", Prints()), estimate_time=False)
    assert report.passed, report.failures


def test_the_call_timeout_holds_while_the_model_prints(tmp_path):
    start = time.monotonic()
    report = verify_submission(
        submission(tmp_path / "s.zip", PrintsForever()), estimate_time=False, limits=VerifyLimits(call_timeout=2)
    )
    assert report.failures[0].startswith("call 1x1: call 1x1 did not return within 2 s")
    assert time.monotonic() - start < 60  # not restarted by each printed line
    assert host_call_children(os.getpid()) == []


def test_a_model_is_refused_memory_beyond_its_cap(tmp_path):
    report = verify_submission(
        submission(tmp_path / "s.zip", Allocates()),
        estimate_time=False,
        limits=VerifyLimits(memory_headroom_bytes=512 << 20),
    )
    detail = _check(report, "call 1x1").detail
    assert "can't allocate memory" in detail and "RLIMIT_AS" in detail


def test_a_constant_model_is_flagged(tmp_path):
    report = verify_submission(submission(tmp_path / "s.zip", Constant()), estimate_time=False)
    assert _failed(report) == {"distinct outputs"}
    assert "would score about 0" in report.failures[0]
    good = verify_submission(submission(tmp_path / "g.zip", Good()), estimate_time=False)
    assert _check(good, "distinct outputs").passed


def _zeros(total: int, block: int = 1 << 20):
    for _ in range(total // block):
        yield bytes(block)


# records that inflate far past their caps: each reader must stop at the cap, whatever the record holds
BOMBS = {
    # a pickle asking for 64 MiB of bytes in one opcode (BINBYTES8), then the zeros
    "data.pkl bytes": ("data.pkl", lambda: [b"\x80\x04\x8e" + (64 << 20).to_bytes(8, "little"), *_zeros(64 << 20)]),
    # one 64 MiB text line (STRING opcode without its newline): read by readline
    "data.pkl line": ("data.pkl", lambda: [b"\x80\x02S'", *(b"a" * (1 << 20) for _ in range(64))]),
    # 12 MiB of Python (ast.parse takes ~600 bytes a byte)
    "code record": ("code/__torch__/bomb.py", lambda: [b"x = 0\n", *(b"x = x + x\n" * (1 << 17) for _ in range(12))]),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_archive_records_that_inflate_hugely_are_refused_with_bounded_memory(tmp_path, bomb):
    record, chunks = BOMBS[bomb]
    path = with_record(tmp_path / "bomb.zip", record, chunks(), replace=record == "data.pkl")
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        report = verify_submission(path, estimate_time=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    detail = _check(report, "readable by torch 1.11").detail
    assert "inflates past" in detail and "zip bomb" in detail
    assert "load" not in {c.name for c in report.checks}  # never handed to torch
    cap = MAX_PICKLE_BYTES if record == "data.pkl" else MAX_CODE_RECORD_BYTES
    assert peak < 4 * cap + (8 << 20), f"peak {peak / 2**20:.0f} MiB"


def test_the_static_readers_stop_at_the_caps(tmp_path):
    # the same with the readers called directly: each refuses by name
    path = with_record(tmp_path / "bomb.zip", "data.pkl", BOMBS["data.pkl bytes"][1](), replace=True)
    with zipfile.ZipFile(path) as zf:
        (tmp_path / "saved_model.pt").write_bytes(zf.read("saved_model.pt"))
    with pytest.raises(Exception, match=r"data\.pkl inflates past 4,194,304 bytes"):
        tensor_placements(tmp_path / "saved_model.pt")
    code = with_record(tmp_path / "code.zip", "code/__torch__/bomb.py", BOMBS["code record"][1]())
    with zipfile.ZipFile(code) as zf:
        (tmp_path / "code.pt").write_bytes(zf.read("saved_model.pt"))
    with pytest.raises(Exception, match=r"bomb\.py inflates past 262,144 bytes"):
        legacy_problems(tmp_path / "code.pt")


def test_an_encrypted_member_gets_one_clean_line(tmp_path):
    outer = tmp_path / "outer.zip"
    outer.write_bytes(encrypted(zip_model(archive_bytes(Good()))))
    report = verify_submission(outer)
    assert report.failures == [
        "zip: saved_model.pt is encrypted (password-protected); the host opens it without a password "
        "-> zip the saved_model.pt that `guie export` wrote"
    ]
    inner = tmp_path / "inner.zip"
    inner.write_bytes(zip_model(encrypted(archive_bytes(Good()))))
    report = verify_submission(inner)
    assert "encrypted" in _check(report, "readable by torch 1.11").detail
    result = CliRunner().invoke(app, ["verify", str(outer), "--json"])
    assert result.exit_code == 1 and '"passed": false' in result.output and "Traceback" not in result.output


def _verify_in_a_process(tmp_path: Path, zip_path: Path) -> tuple[subprocess.Popen, int]:
    """`guie verify` on a model that never returns, in its own process; it and its child's pid once running."""
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))  # whatever a killed verify leaves lands in tmp_path
    verify = subprocess.Popen(
        [sys.executable, "-m", "guie", "verify", str(zip_path), "--no-estimate-time"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (children := host_call_children(verify.pid)):
        assert verify.poll() is None and time.monotonic() < deadline, verify.communicate()
        time.sleep(0.2)
    time.sleep(3)  # into its endless call
    return verify, children[0]


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not host_call_children() or pid not in host_call_children():
            return True
        time.sleep(0.2)
    return False


def test_sigterm_to_verify_kills_its_child_and_removes_its_files(tmp_path):
    verify, child = _verify_in_a_process(tmp_path, submission(tmp_path / "s.zip", NeverReturns()))
    verify.send_signal(signal.SIGTERM)
    _, err = verify.communicate(timeout=60)
    assert verify.returncode == 2 and "verify stopped by SIGTERM" in err
    assert _gone(child)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_sigkilled_verify_takes_its_child_with_it(tmp_path):
    verify, child = _verify_in_a_process(tmp_path, submission(tmp_path / "s.zip", NeverReturns()))
    verify.kill()
    verify.communicate(timeout=60)
    assert _gone(child)  # PR_SET_PDEATHSIG
