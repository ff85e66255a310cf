"""What a submission was made from: git commit, params hash, artifact sha256.

Written into every dataset version and submission description, and parsed back by `guie status`
so a leaderboard score leads to the exact commit and DVC experiment that produced it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from guie.errors import GuieError

_PATTERN = re.compile(r"guie commit=(?P<commit>\S+) params=(?P<params>\S+) sha256=(?P<sha>[0-9a-f]{64})")


@dataclass(frozen=True)
class Provenance:
    commit: str
    params_hash: str
    sha256: str

    def describe(self) -> str:
        return f"guie commit={self.commit} params={self.params_hash} sha256={self.sha256}"

    @classmethod
    def parse(cls, text: str | None) -> Provenance | None:
        match = _PATTERN.search(text or "")
        return cls(match["commit"], match["params"], match["sha"]) if match else None


def _sha256_of(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256_of(f)


def model_sha256(zip_path: Path) -> str:
    """sha256 of the zip's saved_model.pt: what the notebook checks, however Kaggle stores the zip."""
    from guie.contract import MODEL_MEMBER

    try:
        with zipfile.ZipFile(zip_path) as zf, zf.open(MODEL_MEMBER) as f:
            return _sha256_of(f)
    except (KeyError, zipfile.BadZipFile):
        raise GuieError(
            f"{zip_path}: no {MODEL_MEMBER} at the zip's root; run `guie export` (and `guie verify`)"
        ) from None


def git_commit(cwd: Path | None = None) -> str:
    """Short HEAD commit, with `-dirty` when tracked files differ from it; `unknown` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
