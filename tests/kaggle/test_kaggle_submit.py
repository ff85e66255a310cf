"""`guie submit` against a fake Kaggle, through the real kaggle client: what arrives, faults, resume."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from fake_kaggle import USER
from tiny_submission import make_submission_zip

from guie.errors import GuieError
from guie.kaggle.provenance import Provenance, file_sha256
from guie.kaggle.status import recent_submissions, submissions_table
from guie.kaggle.submit import STATE_FILE, SubmitRequest, submit
from guie.stages.verify import verify_submission

COMPETITION = "google-universal-image-embedding"
DATASET = f"{USER}/guie-submission-model"
KERNEL = f"{USER}/guie-submission"


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path / "work"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_submit_delivers_artifact_notebook_and_code_submission(
    fake, env_credentials, params, submission_zip, work_dir, console, capfd
):
    # The real `guie verify` passes the tiny model, then every step runs.
    request = SubmitRequest(
        zip_path=submission_zip, work_dir=work_dir, params_hash="p4r4ms", commit="abc1234", wait_for_score=True
    )
    result = submit(params, request, console=console, verify=verify_submission)
    assert capfd.readouterr() == ("", "")  # the kaggle client printed nothing of its own

    sha = file_sha256(submission_zip)
    # The dataset holds exactly the zip's bytes, private, described with the provenance.
    [start] = fake.bodies("StartBlobUpload")
    assert (
        start["name"] == "submission.zip"
        and start["contentLength"] == submission_zip.stat().st_size
        and start["type"] == "DATASET"
    )
    [create] = fake.bodies("CreateDataset")
    assert (create["ownerSlug"], create["slug"], create["isPrivate"]) == (USER, "guie-submission-model", True)
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": submission_zip.read_bytes()}
    assert sha in create["description"]

    # The notebook: private, internet explicitly off, the dataset and competition attached.
    [push] = fake.bodies("SaveKernel")
    assert push["slug"] == KERNEL and push["kernelType"] == "notebook" and push["language"] == "python"
    assert push["isPrivate"] is True and push["enableInternet"] is False and push["enableGpu"] is False
    assert push["datasetDataSources"] == [DATASET] and push["competitionDataSources"] == [COMPETITION]
    notebook = nbformat.reads(push["text"], as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "/kaggle/working/submission.zip" in code and "torch.jit.load" in code

    # The code submission names the pushed version and the file the notebook writes.
    [sub] = fake.bodies("CreateCodeSubmission")
    assert (sub["competitionName"], sub["kernelOwner"], sub["kernelSlug"]) == (COMPETITION, USER, "guie-submission")
    assert sub["kernelVersion"] == 1 and sub["fileName"] == "submission.zip"
    assert Provenance.parse(sub["submissionDescription"]) == Provenance("abc1234", "p4r4ms", sha)

    assert (result.kernel_version, result.submission_ref, result.public_score) == (1, 1000, pytest.approx(0.6123))
    assert f"https://www.kaggle.com/code/{KERNEL}" in console.export_text()


def test_status_maps_submissions_back_to_provenance(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    run_submit(params, submission_zip, work_dir, console)
    fake.submissions.append(
        {
            "ref": 7,
            "date": "2024-04-01T00:00:00.000Z",
            "description": "manual upload",
            "status": "COMPLETE",
            "publicScore": "0.5",
            "polls": 0,
            "competition": COMPETITION,
        }
    )
    rows = recent_submissions(params)
    ours = next(r for r in rows if r.ref == 1000)
    assert ours.provenance == Provenance("abc1234", "p4r4ms", file_sha256(submission_zip))
    other = next(r for r in rows if r.ref == 7)
    assert other.provenance is None and other.public_score == 0.5
    console.print(submissions_table(rows))
    text = console.export_text()
    assert "abc1234" in text and "not guie" in text


def test_new_artifact_adds_a_dataset_version_and_kernel_version(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, tmp_path, console
):
    run_submit(params, submission_zip, work_dir, console)
    second = make_submission_zip(tmp_path / "second" / "submission.zip", seed=1)
    result = run_submit(params, second, work_dir, console)

    assert fake.names().count("CreateDataset") == 1
    [version] = fake.bodies("CreateDatasetVersion")
    assert file_sha256(second) in version["body"]["versionNotes"]
    assert fake.datasets[DATASET]["versions"][-1]["files"] == {"submission.zip": second.read_bytes()}
    assert len(fake.kernels[KERNEL]["versions"]) == 2 and len(fake.kernels) == 1
    assert [s["kernelVersion"] for s in fake.bodies("CreateCodeSubmission")] == [1, 2]
    assert result.kernel_version == 2


def test_rerun_of_a_submitted_artifact_only_asks_kaggle(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    first = run_submit(params, submission_zip, work_dir, console)
    calls = len(fake.calls)
    console.export_text(clear=True)
    again = run_submit(params, submission_zip, work_dir, console)
    assert fake.names()[calls:] == ["ListSubmissions"]  # one question, nothing created
    assert again.already_submitted and again.submission_ref == first.submission_ref
    text = console.export_text()
    assert "already submitted as 1000" in text
    assert not any(line.startswith("submitted") for line in text.splitlines())


CREATES = ("StartBlobUpload", "upload", "CreateDataset", "CreateDatasetVersion", "SaveKernel", "CreateCodeSubmission")


def _creates(fake) -> dict[str, int]:
    return {name: fake.names().count(name) for name in CREATES}


def test_fresh_clone_of_a_submitted_artifact_submits_nothing(
    run_submit, fake, env_credentials, params, submission_zip, tmp_path, console
):
    run_submit(params, submission_zip, tmp_path / "clone1" / ".guie", console)
    before = _creates(fake)
    result = run_submit(params, submission_zip, tmp_path / "clone2" / ".guie", console)  # no local state
    assert _creates(fake) == before
    assert result.already_submitted and result.submission_ref == 1000
    assert len(fake.datasets[DATASET]["versions"]) == 1 and len(fake.kernels[KERNEL]["versions"]) == 1
    assert len(fake.submissions) == 1


def test_again_submits_once_more_reusing_the_dataset_and_notebook_on_kaggle(
    run_submit, fake, env_credentials, params, submission_zip, tmp_path, console
):
    run_submit(params, submission_zip, tmp_path / "clone1", console)
    result = run_submit(params, submission_zip, tmp_path / "clone2", console, again=True)
    assert not result.already_submitted and result.submission_ref == 1001
    names = fake.names()
    assert names.count("StartBlobUpload") == 1 and names.count("SaveKernel") == 1  # reused, not re-sent
    assert [s["kernelVersion"] for s in fake.bodies("CreateCodeSubmission")] == [1, 1]
    assert "version 1 already holds this artifact" in console.export_text()


def test_fresh_clone_after_a_failed_submit_step_reuses_what_kaggle_has(
    run_submit, fake, env_credentials, params, submission_zip, tmp_path, console
):
    fake.rules_accepted.clear()  # dataset and notebook get made, the submission is refused
    with pytest.raises(GuieError, match="accept the competition rules"):
        run_submit(params, submission_zip, tmp_path / "clone1", console)
    fake.rules_accepted.add(COMPETITION)
    result = run_submit(params, submission_zip, tmp_path / "clone2", console)
    made = _creates(fake)
    assert (made["StartBlobUpload"], made["CreateDataset"], made["CreateDatasetVersion"], made["SaveKernel"]) == (
        1,
        1,
        0,
        1,
    )
    assert result.submission_ref == 1000 and result.kernel_version == 1 and not result.already_submitted


def test_a_notebook_pushed_for_another_artifact_is_pushed_again(
    run_submit, fake, env_credentials, params, submission_zip, tmp_path, console
):
    run_submit(params, submission_zip, tmp_path / "clone1", console)
    second = make_submission_zip(tmp_path / "second" / "submission.zip", seed=1)
    result = run_submit(params, second, tmp_path / "clone2", console)
    assert len(fake.datasets[DATASET]["versions"]) == 2 and len(fake.kernels[KERNEL]["versions"]) == 2
    assert result.kernel_version == 2 and not result.already_submitted


def test_a_submission_that_failed_scoring_does_not_count(
    run_submit, fake, env_credentials, params, submission_zip, tmp_path, console
):
    reason = "Notebook Threw Exception: CUDA out of memory [while embedding]"
    fake.score_error = reason
    with pytest.raises(
        GuieError,
        match=r"(?s)submission 1000 .*failed scoring: Notebook Threw Exception: CUDA out of memory "
        r"\[while embedding\].*does not count",
    ):
        run_submit(params, submission_zip, tmp_path / "clone1", console, wait_for_score=True)
    fake.score_error = None
    console.export_text(clear=True)
    result = run_submit(params, submission_zip, tmp_path / "clone2", console, wait_for_score=True)
    assert not result.already_submitted and result.submission_ref == 1001
    assert result.public_score == pytest.approx(0.6123)
    text = console.export_text()
    assert f"submission 1000 of this artifact failed scoring: {reason}" in text and "does not count" in text
    assert _creates(fake)["StartBlobUpload"] == 1 and _creates(fake)["SaveKernel"] == 1


def test_submissions_of_the_artifact_are_found_beyond_the_first_page(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    run_submit(params, submission_zip, work_dir, console)
    for i in range(7):  # newer submissions of other work push ours to page 3
        fake.submissions.append(
            {
                "ref": 2000 + i,
                "date": "2024-05-02T00:00:00.000Z",
                "description": "manual",
                "status": "COMPLETE",
                "polls": 0,
                "competition": COMPETITION,
            }
        )
    fake.submissions_page_size = 3
    result = run_submit(params, submission_zip, work_dir.parent / "clone2", console)
    assert result.already_submitted and result.submission_ref == 1000
    assert fake.names().count("ListSubmissions") == 1 + 3


def test_new_version_waits_while_the_previous_one_is_processing(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, tmp_path, console
):
    run_submit(params, submission_zip, work_dir, console)
    fake.datasets[DATASET]["versions"][-1]["polls"] = 3  # Kaggle still processing version 1: a new one gets 403
    fake.dataset_polls = 2
    second = make_submission_zip(tmp_path / "second" / "submission.zip", seed=1)
    before = len(fake.calls)
    result = run_submit(params, second, work_dir, console)
    names = fake.names()[before:]
    assert names.count("CreateDatasetVersion") == 1  # no 403: it waited first
    create = names.index("CreateDatasetVersion")
    assert names[:create].count("GetDatasetStatus") == 4  # 3 x processing, then ready
    push = names.index("SaveKernel")
    assert names[create:push].count("GetDatasetStatus") == 3  # the new version is ready before the push
    assert result.kernel_version == 2 and len(fake.datasets[DATASET]["versions"]) == 2


def test_a_403_on_the_new_version_waits_until_ready_and_tries_once_more(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, tmp_path, console
):
    run_submit(params, submission_zip, work_dir, console)
    fake.fail("CreateDatasetVersion", 403, message="Dataset version is still being processed")
    second = make_submission_zip(tmp_path / "second" / "submission.zip", seed=1)
    result = run_submit(params, second, work_dir, console)
    assert fake.names().count("CreateDatasetVersion") == 2 and fake.names().count("StartBlobUpload") == 2
    assert "Kaggle refused a new version (HTTP 403)" in console.export_text()
    assert fake.datasets[DATASET]["versions"][-1]["files"]["submission.zip"] == second.read_bytes()
    assert result.submission_ref == 1001


def test_a_403_that_persists_names_the_account(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, tmp_path, console
):
    run_submit(params, submission_zip, work_dir, console)
    fake.fail("CreateDatasetVersion", 403, times=2, message="Permission denied")
    second = make_submission_zip(tmp_path / "second" / "submission.zip", seed=1)
    with pytest.raises(
        GuieError, match=r"add a version to dataset alice/guie-submission-model: permission denied for 'alice'"
    ):
        run_submit(params, second, work_dir, console)
    assert len(fake.datasets[DATASET]["versions"]) == 1


def test_dry_run_writes_folders_and_calls_nothing(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    result = run_submit(params, submission_zip, work_dir, console, dry_run=True)
    assert fake.calls == []
    assert (work_dir / "dataset" / "submission.zip").read_bytes() == submission_zip.read_bytes()
    dataset_meta = json.loads((work_dir / "dataset" / "dataset-metadata.json").read_text())
    assert dataset_meta["id"] == DATASET and 6 <= len(dataset_meta["title"]) <= 50
    kernel_meta = json.loads((work_dir / "notebook" / "kernel-metadata.json").read_text())
    assert kernel_meta["enable_internet"] is False and kernel_meta["is_private"] is True
    assert kernel_meta["dataset_sources"] == [DATASET] and kernel_meta["competition_sources"] == [COMPETITION]
    assert (work_dir / "notebook" / kernel_meta["code_file"]).is_file()
    text = console.export_text()
    assert result.dry_run and all(step[:30] in text for step in result.plan)


def test_dry_run_with_a_username_needs_no_credentials(run_submit, fake, params, submission_zip, work_dir, console):
    from dataclasses import replace

    result = run_submit(replace(params, username="bob"), submission_zip, work_dir, console, dry_run=True)
    assert result.target.dataset == "bob/guie-submission-model" and fake.calls == []


def test_failing_verification_refuses_before_anything_is_sent(
    fake, env_credentials, params, submission_zip, work_dir, console
):
    def fails(_: Path) -> SimpleNamespace:
        return SimpleNamespace(passed=False, failures=["output shape: [64], expected [1, 64]"])

    request = SubmitRequest(zip_path=submission_zip, work_dir=work_dir, params_hash="p", commit="c")
    with pytest.raises(GuieError, match=r"(?s)fails `guie verify`.*output shape.*--skip-verify"):
        submit(params, request, console=console, verify=fails)
    assert fake.names() == ["ListSubmissions"]  # only asked whether this artifact was submitted
    result = submit(params, dataclasses.replace(request, skip_verify=True), console=console, verify=fails)
    assert result.submission_ref is not None


def test_wrong_key_is_a_401_message_about_credentials(
    run_submit, fake, monkeypatch, params, submission_zip, work_dir, console
):
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", "not-the-key-0000")
    with pytest.raises(
        GuieError, match=r"credentials from KAGGLE_USERNAME/KAGGLE_KEY \(HTTP 401\).*settings/api"
    ) as err:
        run_submit(params, submission_zip, work_dir, console)
    assert "not-the-key-0000" not in str(err.value)
    assert fake.names() == ["ListSubmissions"]  # not retried


def test_rules_not_accepted_is_a_403_with_the_rules_url_then_resumes(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    fake.rules_accepted.clear()
    with pytest.raises(
        GuieError,
        match=rf"403.*accept the competition rules at https://www.kaggle.com/competitions/{COMPETITION}/rules",
    ):
        run_submit(params, submission_zip, work_dir, console)
    fake.rules_accepted.add(COMPETITION)
    run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count("StartBlobUpload") == 1 and fake.names().count("SaveKernel") == 1
    assert len(fake.submissions) == 1


@pytest.mark.parametrize(
    "rpc,status", [("SaveKernel", 500), ("StartBlobUpload", 503), ("CreateCodeSubmission", 429), ("upload", 500)]
)
def test_transient_failure_is_retried_then_succeeds(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console, rpc, status
):
    fake.fail(rpc, status, times=1, retry_after="0" if status == 429 else None)
    result = run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count(rpc) == 2
    assert len(fake.kernels[KERNEL]["versions"]) == 1 and len(fake.submissions) == 1
    assert fake.datasets[DATASET]["versions"][-1]["files"]["submission.zip"] == submission_zip.read_bytes()
    assert result.submission_ref == 1000


def test_server_errors_give_up_after_max_attempts(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    fake.fail("GetKernelSessionStatus", 500, times=10)
    with pytest.raises(GuieError, match=r"server error \(HTTP 500\) after 3 tries"):
        run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count("GetKernelSessionStatus") == params.max_attempts


def test_hanging_status_call_times_out_after_bounded_retries(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    from dataclasses import replace

    params = replace(params, request_timeout_s=0.3)
    fake.hang("GetKernelSessionStatus", times=10)
    started = time.monotonic()
    with pytest.raises(GuieError, match=r"no answer within 0.3 s .*after 3 tries"):
        run_submit(params, submission_zip, work_dir, console)
    assert time.monotonic() - started < 5
    assert fake.names().count("GetKernelSessionStatus") == 3


def test_hanging_create_call_is_not_repeated(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    from dataclasses import replace

    params = replace(params, request_timeout_s=0.3)
    fake.hang("SaveKernel")
    with pytest.raises(GuieError, match=r"no answer within 0.3 s.*may have gone through"):
        run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count("SaveKernel") == 1


def test_kernel_error_shows_its_message_and_url_and_rerun_pushes_again(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    fake.kernel_outcome = ("ERROR", "FileNotFoundError: no saved_model.pt with sha256 ...")
    with pytest.raises(
        GuieError, match=rf"(?s)failed: FileNotFoundError: no saved_model.pt.*https://www.kaggle.com/code/{KERNEL}"
    ):
        run_submit(params, submission_zip, work_dir, console)
    assert fake.submissions == []
    fake.kernel_outcome = ("COMPLETE", None)
    result = run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count("StartBlobUpload") == 1
    assert len(fake.kernels[KERNEL]["versions"]) == 2 and result.kernel_version == 2
    assert [s["kernelVersion"] for s in fake.bodies("CreateCodeSubmission")] == [2]


def _push_fails(fake, monkeypatch, params):
    fake.fail("SaveKernel", 500, times=params.max_attempts)
    return GuieError


def _ctrl_c_while_dataset_processes(fake, monkeypatch, params):
    import guie.kaggle.upload

    real, calls = guie.kaggle.upload.poll_until, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # only the first run is interrupted
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(guie.kaggle.upload, "poll_until", interrupted)
    return KeyboardInterrupt


@pytest.mark.parametrize("interrupt", [_push_fails, _ctrl_c_while_dataset_processes])
def test_run_interrupted_after_upload_resumes_without_duplicates(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console, monkeypatch, interrupt
):
    expected = interrupt(fake, monkeypatch, params)
    with pytest.raises(expected):
        run_submit(params, submission_zip, work_dir, console)
    state = json.loads((work_dir / STATE_FILE).read_text())
    assert state["dataset_uploaded"] and state["kernel_version"] is None

    result = run_submit(params, submission_zip, work_dir, console)
    names = fake.names()
    assert names.count("StartBlobUpload") == 1 and names.count("upload") == 1
    assert names.count("CreateDataset") == 1 and "CreateDatasetVersion" not in names
    assert len(fake.datasets) == 1 and len(fake.kernels) == 1 and len(fake.kernels[KERNEL]["versions"]) == 1
    assert len(fake.submissions) == 1 and result.kernel_version == 1


def test_failed_upload_never_poisons_the_next_one(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console, isolated_env
):
    fake.fail("upload", 500, times=params.max_attempts)
    with pytest.raises(GuieError, match="upload submission.zip"):
        run_submit(params, submission_zip, work_dir, console)
    assert "CreateDataset" not in fake.names()

    run_submit(params, submission_zip, work_dir, console)
    tokens = [c.body["token"] for c in fake.calls if c.rpc == "upload"]
    assert fake.names().count("StartBlobUpload") == 2 and tokens[-1] != tokens[0]  # a fresh upload URL
    assert fake.datasets[DATASET]["versions"][-1]["files"]["submission.zip"] == submission_zip.read_bytes()
    assert not list(isolated_env["tmp"].rglob("*upload*"))  # no client upload state left in TMPDIR


def test_kernel_timeout_keeps_the_version_and_rerun_goes_on_waiting(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    from dataclasses import replace

    fake.kernel_polls = 10**6
    with pytest.raises(GuieError, match=r"still running after 0.2 s.*re-run `guie submit` to go on waiting"):
        run_submit(replace(params, kernel_timeout_s=0.2), submission_zip, work_dir, console)
    fake.kernels[KERNEL]["polls"] = 0
    run_submit(params, submission_zip, work_dir, console)
    assert fake.names().count("SaveKernel") == 1 and len(fake.submissions) == 1


def test_pushing_to_another_users_account_is_a_403_naming_the_account(
    run_submit, fake, env_credentials, params, submission_zip, work_dir, console
):
    from dataclasses import replace

    with pytest.raises(GuieError, match=r"create dataset bob/guie-submission-model: permission denied for 'alice'"):
        run_submit(replace(params, username="bob"), submission_zip, work_dir, console)
