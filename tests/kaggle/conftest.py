"""Each Kaggle test gets its own HOME and TMPDIR (the client keeps config in one and upload state
in the other), no Kaggle variables from the outside, and a fake Kaggle on 127.0.0.1."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from fake_kaggle import KEY, USER, FakeKaggle
from rich.console import Console
from tiny_submission import make_submission_zip

from guie.kaggle.settings import KaggleParams


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the first TMPDIR it saw
    for name in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "KAGGLE_CONFIG_DIR",
        "XDG_CONFIG_HOME",
        "GUIE_KAGGLE_ENDPOINT",
        "KAGGLE_API_ENVIRONMENT",
        "VERBOSE",
        "VERBOSE_OUTPUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return {"home": home, "tmp": tmpdir}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    server = FakeKaggle(USER, KEY).start()
    server.rules_accepted.add("google-universal-image-embedding")
    monkeypatch.setenv("GUIE_KAGGLE_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture
def env_credentials(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    return KEY


@pytest.fixture
def params() -> KaggleParams:
    """Fast polling, short timeouts and back-off, so faults cost milliseconds."""
    return KaggleParams(
        poll_interval_s=0.01,
        poll_max_interval_s=0.02,
        dataset_timeout_s=5.0,
        kernel_timeout_s=5.0,
        score_timeout_s=5.0,
        request_timeout_s=5.0,
        max_attempts=3,
        retry_backoff_s=0.01,
    )


@pytest.fixture
def console() -> Console:
    return Console(file=io.StringIO(), width=200, record=True)


@pytest.fixture
def submission_zip(tmp_path: Path) -> Path:
    return make_submission_zip(tmp_path / "artifacts" / "submission.zip")
