"""`guie submit` and `guie status` as a user runs them: params.yaml in a project, the real client,
the fake Kaggle server."""

from __future__ import annotations

import json
import shutil
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
    result = CliRunner().invoke(
        app, ["submit", "--dry-run", "--root", str(root), "--params", str(root / "params.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert fake.bodies("StartBlobUpload") == [] and fake.bodies("SaveKernel") == []
    assert (root / ".guie" / "submit" / "dataset" / "dataset-metadata.json").is_file()


def test_dry_run_without_credentials_or_network_shows_the_plan_with_a_placeholder_owner(params, tmp_path, monkeypatch):
    import socket

    from guie.kaggle.submit import PLACEHOLDER_OWNER

    def no_network(*args, **kwargs):
        raise AssertionError(f"a dry run opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # isolated_env: no Kaggle variables, empty HOME
    monkeypatch.setattr(cli.console, "width", 250)
    root = _project(tmp_path / "proj", params)
    result = _submit(root, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "no Kaggle credentials" in result.output
    assert f"the owner {PLACEHOLDER_OWNER!r} below is a placeholder" in result.output
    assert f"private dataset {PLACEHOLDER_OWNER}/guie-submission-model" in result.output
    meta = json.loads((root / ".guie" / "submit" / "dataset" / "dataset-metadata.json").read_text())
    assert meta["id"] == f"{PLACEHOLDER_OWNER}/guie-submission-model"

    real = _submit(root)  # without --dry-run the missing credentials stop it, before anything is sent
    assert real.exit_code != 0 and "no Kaggle credentials" in str(real.exception)


def test_submit_refuses_an_artifact_that_fails_verify(fake, env_credentials, params, tmp_path):
    root = _project(tmp_path / "proj", params)
    (root / "submission" / "submission.zip").write_bytes(b"not a zip")
    result = CliRunner().invoke(app, ["submit", "--root", str(root), "--params", str(root / "params.yaml")])
    assert result.exit_code != 0
    assert fake.bodies("StartBlobUpload") == []


def _submit(root: Path, *extra: str):
    return CliRunner().invoke(app, ["submit", "--root", str(root), "--params", str(root / "params.yaml"), *extra])


def test_a_second_submit_from_a_fresh_checkout_says_already_submitted(
    fake, env_credentials, params, tmp_path, monkeypatch
):
    monkeypatch.setattr(cli.console, "width", 250)
    root = _project(tmp_path / "proj", params)
    assert _submit(root).exit_code == 0
    shutil.rmtree(root / ".guie")  # or a fresh clone: no local record of the submission
    again = _submit(root)
    assert again.exit_code == 0, again.output
    assert "already submitted as 1000" in again.output
    assert not any(line.startswith("submitted") for line in again.output.splitlines())
    assert len(fake.submissions) == 1 and fake.names().count("StartBlobUpload") == 1

    forced = _submit(root, "--again", "--skip-verify")  # verified by the first run
    assert forced.exit_code == 0, forced.output
    assert any(line.startswith("submitted") for line in forced.output.splitlines())
    assert [s["ref"] for s in fake.submissions] == [1000, 1001]


def test_a_failed_scoring_run_shows_kaggles_reason_in_submit_wait_and_status(
    fake, env_credentials, params, tmp_path, monkeypatch
):
    monkeypatch.setattr(cli.console, "width", 250)
    reason = "Submission Scoring Error: your notebook hit an OOM [rank 3] on image 12345"
    fake.score_error = reason
    root = _project(tmp_path / "proj", params)
    result = _submit(root, "--wait")
    assert result.exit_code != 0
    assert reason in " ".join(str(result.exception).split())

    status = CliRunner().invoke(app, ["status", "--params", str(root / "params.yaml")])
    assert status.exit_code == 0, status.output
    assert f"submission 1000 failed: {reason}" in status.output  # in full, markup shown as text

    fake.score_error = None
    retry = _submit(root, "--wait")  # a failed scoring run does not count as submitted
    assert retry.exit_code == 0, retry.output
    assert "does not count" in retry.output and "public score 0.6123" in retry.output
    assert [s["ref"] for s in fake.submissions] == [1000, 1001]


# what a hostile description or errorDescription could make a terminal do
_ESCAPES = [
    "\x1b]0;owned\x07",  # set the window title
    "\x1b[2J\x1b[H",  # clear the screen
    "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",  # a hyperlink
    "\x1b[31m",  # colours
    "\x9b1A",  # C1 CSI: cursor up
    "\r",  # back to the line's start, to print over it
    "\u202e",  # right-to-left override
]


def test_status_strips_terminal_escapes_from_kaggles_text(fake, env_credentials, params, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.console, "width", 250)
    root = _project(tmp_path / "project", params)
    for ref, status, extra in [
        (7, "COMPLETE", {"publicScore": "0.5", "description": "mine" + "".join(_ESCAPES)}),
        (8, "ERROR", {"description": "x", "errorDescription": "bad" + "".join(_ESCAPES) + " model\nsecond line"}),
    ]:
        fake.submissions.append(
            {
                "ref": ref,
                "date": "2024-04-01T00:00:00.000Z",
                "status": status,
                "polls": 0,
                "competition": params.competition,
            }
            | extra
        )
    status = CliRunner().invoke(app, ["status", "--params", str(root / "params.yaml")])
    assert status.exit_code == 0, status.output
    assert "(not guie) mineclick" in status.output
    assert "submission 8 failed: badclick model second line" in status.output
    assert not any(c in status.output for c in "\x1b\x9b\x07\r\u202e"), repr(status.output)
