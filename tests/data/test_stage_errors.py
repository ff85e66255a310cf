"""`guie download` and `guie manifest` where their output folders cannot be written: one line on
stderr saying what to change, exit code 2, no traceback, and no work done first.

The tests run the real command in a subprocess. Root ignores permission bits, so as root the
command runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from its bounding set before
exec): a folder chmod'ed read-only then refuses root as it refuses anyone.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, full_tmpfs, guie_cli, mounts_allowed, one_line_error, tiny_params_dict, write_params

from guie.layout import Layout
from guie.params.load import parse_params
from guie.stages.download import download_sources

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETPCAP = 1, 2, 8


def _drop_root_override():
    """A preexec_fn taking away root's permission override, or None when not root."""
    if os.geteuid() != 0:
        return None
    effective = int(
        next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:")).split()[
            1
        ],
        16,
    )
    if not effective >> CAP_SETPCAP & 1:
        pytest.skip("running as root without CAP_SETPCAP: no way to make a read-only folder refuse root")
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                os._exit(97)

    return drop


def _guie(*args: str, root: Path, read_only: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "guie", *args, "--params", str(root / "params.yaml"), "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=_drop_root_override() if read_only else None,
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path):
    write_params(tmp_path / "params.yaml", tiny_params_dict())
    return tmp_path


@pytest.fixture
def downloaded(project):
    download_sources(parse_params(tiny_params_dict()), project, Layout(project).raw, Layout(project).downloads_dir)
    return project


@pytest.mark.parametrize("stage", ["download", "manifest"])
def test_data_raw_being_a_file(stage, project):
    (project / "data").mkdir()
    (project / "data" / "raw").write_text("not a folder")
    line = _one_line_error(_guie(stage, root=project))
    assert f"{project / 'data' / 'raw'} is a file, not a folder; move or delete it" in line
    assert (project / "data" / "raw").read_text() == "not a folder"  # never deleted for you


def test_data_manifest_being_a_file(downloaded):
    (downloaded / "data" / "manifest").write_text("not a folder")
    line = _one_line_error(_guie("manifest", root=downloaded))
    assert line == (
        f"error: manifest: {downloaded / 'data' / 'manifest'} is a file, not a folder; "
        "move or delete it and re-run `guie manifest`"
    )


def test_read_only_data_raw(project):
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    raw.chmod(0o555)
    try:
        line = _one_line_error(_guie("download", root=project, read_only=True))
    finally:
        raw.chmod(0o755)
    assert line == (
        f"error: download: {raw}: Permission denied; fix its permissions (chmod u+rwx on the folder, or its owner), "
        "then re-run `guie download`"
    )
    assert os.listdir(raw) == []


def test_read_only_data_manifest(downloaded):
    out = downloaded / "data" / "manifest"
    out.mkdir()
    out.chmod(0o555)
    try:
        line = _one_line_error(_guie("manifest", root=downloaded, read_only=True))
    finally:
        out.chmod(0o755)
    assert f"error: manifest: {out}: Permission denied; fix its permissions" in line
    assert os.listdir(out) == []


@pytest.mark.skipif(not mounts_allowed(), reason="no user and mount namespaces here: no tmpfs to fill")
def test_a_full_data_manifest_is_refused_before_decoding_and_writes_nothing(downloaded):
    out = downloaded / "data" / "manifest"
    out.mkdir()
    result = guie_cli("manifest", root=downloaded, mounts=full_tmpfs(out, "1m", keep=True), after=f"ls -A '{out}'")
    line = one_line_error(result)
    assert line.startswith(f"error: manifest: {out}: 0 B free on its disk, and manifest writes about ")
    assert line.endswith("free some disk space, then re-run `guie manifest`")
    assert "manifest by source" not in result.stderr  # refused before decoding: no report yet
    assert result.stdout.split() == [".fill"]  # no rejected.csv, no temporary file
