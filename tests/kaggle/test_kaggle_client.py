"""Credentials, laziness, endpoint and the promise that the key never appears anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_kaggle import KEY, USER
from pydantic import TypeAdapter, ValidationError

from guie.errors import GuieError
from guie.kaggle.client import KaggleClient
from guie.kaggle.credentials import load_credentials
from guie.kaggle.settings import resolve_target
from guie.kaggle.status import recent_submissions
from guie.kaggle.submit import SubmitRequest, submit
from guie.params.kaggle import KaggleParams


def _kaggle_json(home: Path, mode: int) -> Path:
    path = home / ".kaggle" / "kaggle.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"username": USER, "key": KEY}))
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_kaggle_json_is_refused_with_the_chmod(isolated_env, mode):
    path = _kaggle_json(isolated_env["home"], mode)
    with pytest.raises(GuieError, match=f"run `chmod 600 {path}`") as err:
        load_credentials()
    assert KEY not in str(err.value)


def test_private_kaggle_json_talks_to_kaggle(isolated_env, fake, params):
    _kaggle_json(isolated_env["home"], 0o600)
    assert recent_submissions(params) == []
    assert [c.user for c in fake.calls] == [USER]


def test_kaggle_config_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text(json.dumps({"username": "carol", "key": "x"}))
    (tmp_path / "cfg" / "kaggle.json").chmod(0o600)
    creds = load_credentials()
    assert (creds.username, creds.source) == ("carol", str(tmp_path / "cfg" / "kaggle.json"))


def test_missing_credentials_say_where_to_put_them(isolated_env):
    with pytest.raises(GuieError, match=r"no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY.*chmod 600"):
        load_credentials()


def test_broken_kaggle_json_names_the_file(isolated_env):
    path = isolated_env["home"] / ".kaggle" / "kaggle.json"
    path.parent.mkdir()
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(GuieError, match=f"{path}: expected JSON"):
        load_credentials()


def test_importing_guie_kaggle_does_not_import_or_run_the_client():
    code = "import sys, guie.kaggle.submit, guie.kaggle.status, guie.kaggle.download; print('kaggle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_building_the_client_prints_nothing_and_writes_nothing_at_home(
    isolated_env, env_credentials, fake, params, capfd
):
    client = KaggleClient(params)
    assert client.api.competition_submissions(params.competition) == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert list(isolated_env["home"].iterdir()) == []


def test_endpoint_variable_must_be_a_base_url(monkeypatch, params, env_credentials):
    monkeypatch.setenv("GUIE_KAGGLE_ENDPOINT", "http://127.0.0.1:9/v1")
    with pytest.raises(GuieError, match=r"GUIE_KAGGLE_ENDPOINT.*no /v1"):
        KaggleClient(params)


def test_unreachable_kaggle_is_one_clear_message(monkeypatch, params, env_credentials):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GUIE_KAGGLE_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(GuieError, match=rf"could not reach Kaggle at http://127.0.0.1:{port} after 3 tries"):
        recent_submissions(params)


def test_target_defaults_come_from_the_credentials_username():
    target = resolve_target(KaggleParams(), "alice")
    assert (target.dataset, target.kernel) == ("alice/guie-submission-model", "alice/guie-submission")
    assert resolve_target(KaggleParams(username="bob", kernel_slug="my-entry"), "alice").kernel == "bob/my-entry"


@pytest.mark.parametrize(
    "field,value", [("dataset_slug", "Bad_Slug"), ("kernel_slug", "short"), ("dataset_slug", "a--b-cdef")]
)
def test_bad_slugs_name_the_field(field, value):
    with pytest.raises(GuieError, match=f"kaggle.{field}"):
        resolve_target(KaggleParams(**{field: value}), "alice")


def test_params_reject_unknown_keys_and_nonpositive_timeouts():
    adapter = TypeAdapter(KaggleParams)
    assert adapter.validate_python({"username": "alice"}).username == "alice"
    with pytest.raises(ValidationError, match="usernme"):
        adapter.validate_python({"usernme": "alice"})
    with pytest.raises(ValidationError, match="greater than 0"):
        adapter.validate_python({"request_timeout_s": 0})


def test_the_key_appears_in_no_produced_file_and_no_output(
    tmp_path, env_credentials, fake, params, submission_zip, console, capfd
):
    def passes(_):
        return SimpleNamespace(passed=True, failures=[])

    work = tmp_path / "work"
    request = SubmitRequest(zip_path=submission_zip, work_dir=work, params_hash="p", commit="c", wait_for_score=True)
    submit(params, request, console=console, verify=passes)
    # Failures too: a server that echoes the key back, and a kernel failure message.
    fake.fail("ListSubmissions", 400, message=f"bad request from key {KEY}")
    with pytest.raises(GuieError) as err:
        recent_submissions(params)
    messages = [str(err.value)]
    fake.kernel_outcome = ("ERROR", f"crashed near {KEY}")
    second = submission_zip.with_name("second.zip")
    second.write_bytes(submission_zip.read_bytes() + b"\0")  # a different artifact: runs the notebook again
    with pytest.raises(GuieError) as err:
        again = SubmitRequest(zip_path=second, work_dir=work, params_hash="p", commit="c", skip_verify=True)
        submit(params, again, console=console, verify=passes)
    messages.append(str(err.value))

    out, errout = capfd.readouterr()
    texts = {
        "stdout": out,
        "stderr": errout,
        "console": console.export_text(),
        **{f"error {i}": m for i, m in enumerate(messages)},
    }
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert len(texts) > 10 and any("saved_model.pt" in t for t in texts.values())
    leaks = [where for where, text in texts.items() if KEY in text]
    assert leaks == []
    assert "***" in messages[0] and "***" in messages[1]
