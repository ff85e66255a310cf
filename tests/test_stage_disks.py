"""`guie train`, `pca` and `export` on full and read-only disks: one line naming the folder and
the cause (no OSError traceback, no C++ abort), and what a killed export leaves is cleaned up.

Full disks are real: a small tmpfs mounted over the output folder in a private user and mount
namespace (`unshare`), so the command sees ENOSPC and nothing stays mounted after it. Read-only is
a read-only bind mount of the whole project in such a namespace, which refuses root too (chmod
does not). Both skip where the machine allows no namespaces.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from support import REPO, full_tmpfs, guie_cli, mounts_allowed, one_line_error, read_only

from guie.layout import Layout
from guie.stages.export import export_submission

needs_mounts = pytest.mark.skipif(not mounts_allowed(), reason="no user and mount namespaces here: no tmpfs to fill")


@needs_mounts
def test_export_into_a_full_submission_folder_is_refused_before_writing(trained_copy):
    submission = trained_copy / "submission"
    submission.mkdir()
    result = guie_cli("export", root=trained_copy, mounts=full_tmpfs(submission, "4m"))
    line = one_line_error(result)  # was: a C++ c10::Error from torch's archive writer and exit 134
    assert line.startswith(f"error: export: {submission}: ")
    assert "free on its disk, and export writes about" in line and line.endswith(
        "free some disk space, then re-run `guie export`"
    )


@needs_mounts
def test_pca_into_a_full_models_folder_names_the_folder(trained_copy):
    models = trained_copy / "models"
    result = guie_cli("pca", root=trained_copy, mounts=full_tmpfs(models, "32m", keep=True))
    line = one_line_error(result)  # was: an OSError traceback naming a temporary file
    assert line == f"error: {models}: cannot write pca.pt there: No space left on device; free some disk space"


@needs_mounts
@pytest.mark.parametrize(
    ("command", "folder"), [(["train", "head"], "models"), (["pca"], "models"), (["export"], "submission")]
)
def test_a_read_only_checkout_is_refused_before_any_work(trained_copy, command, folder):
    (trained_copy / "submission").mkdir(exist_ok=True)
    result = guie_cli(*command, root=trained_copy, mounts=read_only(trained_copy))
    line = one_line_error(result)
    assert line == (
        f"error: {command[0]}: {trained_copy / folder}: Read-only file system; it is on a read-only file system: "
        f"remount it read-write or move the project to a writable disk, then re-run `guie {command[0]}`"
    )


def test_export_removes_what_a_killed_export_left_and_git_ignores_it(trained_project, tmp_path):
    params, layout = trained_project
    out = Layout(tmp_path)
    submission = out.submission.parent
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [submission / f".guie-export-{dead.pid}-abc", submission / ".guie-export-old"]
    running = submission / f".guie-export-{os.getppid()}-xyz"  # another export's, still at work
    for folder in [*stale, running]:
        folder.mkdir(parents=True)
        (folder / "raw.pt").write_bytes(b"x" * 1000)
    export_submission(params, layout.trained("finetune"), layout.weights, layout.pca, out.submission, out.export_info)
    assert sorted(p.name for p in submission.iterdir()) == sorted(
        [running.name, out.submission.name, out.export_info.name]
    )
    # and git never shows one (nor an atomic write's temporary file)
    ignored = subprocess.run(
        ["git", "check-ignore", "submission/.guie-export-123-abcd/raw.pt", "submission/.submission.zip.x1.tmp"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert len(ignored.stdout.splitlines()) == 2, ignored
