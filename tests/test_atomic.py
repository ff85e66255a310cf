"""Writes the disk refuses: one line naming the folder, the file and the cause; the old file stays,
no temporary file is left, and files that go together are replaced together or not at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import REPO, full_tmpfs, mounts_allowed

from guie.atomic import atomic_paths, require_free, writable_dir
from guie.errors import GuieError


def _write_over_a_file_size_limit(path: Path, limit: int, data_size: int) -> subprocess.CompletedProcess:
    """`write_bytes(path, ...)` in a process that may write at most `limit` bytes per file (`ulimit -f`):
    the kernel then refuses the write as a full disk would, with EFBIG instead of ENOSPC."""
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from guie.atomic import write_bytes
        from guie.errors import GuieError
        try:
            write_bytes({str(path)!r}, b"x" * {data_size})
        except GuieError as err:
            print(err)
            sys.exit(2)
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_a_refused_write_names_the_folder_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    result = _write_over_a_file_size_limit(out, 1000, 5000)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == (
        f"{tmp_path}: cannot write out.bin there: File too large; the file is larger than this process may "
        "write: raise the limit (`ulimit -f`) or free the quota"
    )
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary file left


def test_files_that_go_together_are_replaced_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(OSError), atomic_paths(first, second) as (a, b):
        a.write_text("new a")
        raise OSError(5, "Input/output error")  # the second file's write failing
    assert (first.read_text(), second.read_text()) == ("old a", "old b")
    with atomic_paths(first, second) as (a, b):
        a.write_text("new a")
        b.write_text("new b")
    assert (first.read_text(), second.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


def test_too_little_free_space_is_refused_naming_the_folder(tmp_path):
    with pytest.raises(GuieError, match=rf"^export: {tmp_path}: .* free on its disk, and export writes about"):
        require_free(tmp_path, 1 << 62, "export")
    writable_dir(tmp_path / "new", "export", need_bytes=1)
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())


needs_mounts = pytest.mark.skipif(
    not mounts_allowed(), reason="no user and mount namespaces here: no way to mount a small tmpfs"
)


@needs_mounts
def test_writing_into_a_full_tmpfs_names_the_folder(tmp_path):
    """The real thing: ENOSPC from a full file system."""
    folder = tmp_path / "disk"
    folder.mkdir()
    code = (
        "from guie.atomic import write_bytes\nfrom guie.errors import GuieError\n"
        f"try:\n    write_bytes({str(folder / 'big.bin')!r}, b'x' * (2 << 20))\n"
        "except GuieError as err:\n    print(err)\n"
        f"import os; print(os.listdir({str(folder)!r}))\n"
    )
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-ec", f'{full_tmpfs(folder, "1m")}\nexec "$@"', "sh"]
        + [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.stdout.splitlines() == [
        f"{folder}: cannot write big.bin there: No space left on device; free some disk space",
        "[]",
    ], result.stderr
