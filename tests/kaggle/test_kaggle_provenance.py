"""Provenance: what every submission description carries, and reading it back."""

from __future__ import annotations

import subprocess

import pytest

from guie.errors import GuieError
from guie.kaggle.provenance import Provenance, git_commit, model_sha256


def test_description_round_trips_and_foreign_descriptions_parse_to_none():
    p = Provenance("abc1234-dirty", "0123456789abcdef", "a" * 64)
    assert Provenance.parse(p.describe()) == p
    assert Provenance.parse("late submission " + p.describe() + " (retry)") == p
    assert Provenance.parse("my own notebook") is None and Provenance.parse(None) is None


def test_git_commit_is_short_head_marked_dirty_and_unknown_outside_git(tmp_path):
    assert git_commit(tmp_path) == "unknown"

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    git("add", "params.yaml")
    git("commit", "-q", "-m", "init")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("x")  # untracked files do not make a run irreproducible
    assert git_commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert git_commit(tmp_path) == head + "-dirty"


def test_a_zip_without_saved_model_at_its_root_is_refused(tmp_path):
    import zipfile

    bad = tmp_path / "submission.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model/saved_model.pt", b"x")
    with pytest.raises(GuieError, match=r"no saved_model.pt at the zip's root"):
        model_sha256(bad)
