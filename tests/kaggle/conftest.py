"""Each Kaggle test gets its own HOME and TMPDIR (the client keeps config in one and upload state
in the other), no Kaggle variables from the outside, and a fake Kaggle on 127.0.0.1."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fake_kaggle import KEY, USER, FakeKaggle
from rich.console import Console
from tiny_submission import make_submission_zip

from guie.kaggle.submit import SubmitRequest, submit
from guie.params.kaggle import KaggleParams


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


def passes_verify(_: Path) -> SimpleNamespace:
    """Stands in for `guie verify` where a test is about Kaggle, not about the model."""
    return SimpleNamespace(passed=True, failures=[])


@pytest.fixture
def run_submit():
    """`guie submit` with fixed provenance and verification passed: run(params, zip, work_dir, console, ...)."""

    def run(params, zip_path, work_dir, console, verify=passes_verify, client=None, **options):
        request = SubmitRequest(zip_path=zip_path, work_dir=work_dir, params_hash="p4r4ms", commit="abc1234", **options)
        return submit(params, request, console=console, verify=verify, client=client)

    return run


class OnWeightsDevice(torch.nn.Module):
    """Moves the host's image to its weights' device first, as guie's exported forward does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.proj.weight.device)
        return torch.nn.functional.normalize(self.proj((x.float() / 255.0).mean(dim=(2, 3))), dim=1)


def place_on_cuda(zip_path: Path) -> Path:
    """Rewrite a CPU-saved submission.zip so its tensors say they were saved on cuda:0, as an
    `export.device: cuda` artifact's do (no GPU needed to make one)."""
    with zipfile.ZipFile(zip_path) as outer:
        archive = zipfile.ZipFile(io.BytesIO(outer.read("saved_model.pt")))
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pkl = next(n for n in members if n.endswith("/data.pkl"))
    # BINUNICODE 'cpu' -> 'cuda:0': the pickle memo refers to it by index, so the new length is fine
    assert b"X\x03\x00\x00\x00cpu" in members[pkl]
    members[pkl] = members[pkl].replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, data)
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("saved_model.pt", inner.getvalue())
    return zip_path


@pytest.fixture
def cuda_submission_zip(tmp_path: Path) -> Path:
    """A submission.zip whose weights are placed on cuda:0."""
    return place_on_cuda(make_submission_zip(tmp_path / "cuda" / "submission.zip", module=OnWeightsDevice()))
