"""`guie submit` and `guie status` as a user runs them: params.yaml in a project, the real client,
the fake Kaggle server."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fake_kaggle import KEY, USER
from support import tiny_params_dict, write_params
from tiny_submission import make_submission_zip
from typer.testing import CliRunner

from guie import cli
from guie.cli import app
from guie.kaggle.provenance import file_sha256


def _project(tmp_path: Path, params) -> Path:
    raw = tiny_params_dict()
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw["kaggle"] = asdict(params)  # fast polling from the fixture; no slugs: derived from the username
    write_params(tmp_path / "params.yaml", raw)
    make_submission_zip(tmp_path / "submission" / "submission.zip")
    return tmp_path


def test_submit_then_status_from_the_command_line(fake, env_credentials, params, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(cli.console, "width", 250)  # a wide terminal: the table is not elided
    root = _project(tmp_path / "proj", params)
    runner = CliRunner()
    result = runner.invoke(app, ["submit", "--root", str(root), "--params", str(root / "params.yaml"), "--wait"])
    assert result.exit_code == 0, result.output
    assert "submitted" in result.output
    sha = file_sha256(root / "submission" / "submission.zip")
    [sub] = fake.bodies("CreateCodeSubmission")
    assert sub["kernelOwner"] == USER and sha in sub["submissionDescription"]
    assert (root / ".guie" / "submit" / "notebook").is_dir()

    status = runner.invoke(app, ["status", "--params", str(root / "params.yaml")])
    assert status.exit_code == 0, status.output
    assert "1000" in status.output and sha[:8] in status.output

    out, err = capfd.readouterr()
    for text in (result.output, status.output, out, err):
        assert KEY not in text


def test_dry_run_from_the_command_line_calls_nothing(fake, env_credentials, params, tmp_path):
    root = _project(tmp_path / "proj", params)
    result = CliRunner().invoke(app, ["submit", "--dry-run", "--root", str(root), "--params", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert fake.bodies("StartBlobUpload") == [] and fake.bodies("SaveKernel") == []
    assert (root / ".guie" / "submit" / "dataset" / "dataset-metadata.json").is_file()


def test_submit_refuses_an_artifact_that_fails_verify(fake, env_credentials, params, tmp_path):
    root = _project(tmp_path / "proj", params)
    (root / "submission" / "submission.zip").write_bytes(b"not a zip")
    result = CliRunner().invoke(app, ["submit", "--root", str(root), "--params", str(root / "params.yaml")])
    assert result.exit_code != 0
    assert fake.bodies("StartBlobUpload") == []
