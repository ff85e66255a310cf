"""`guie submit`: from a verified submission.zip to a scored code submission, resumably.

Steps: verify -> upload the zip as a private dataset -> wait until Kaggle processed it -> push
the notebook -> wait for its run -> submit that notebook version -> (optionally) wait for the
score. Each finished step is recorded in `<work_dir>/submit-state.json` (keyed by the artifact's
sha256 and the target names), so re-running after any failure carries on where it stopped and
never creates a second dataset or notebook.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rich.console import Console

from guie.atomic import write_text
from guie.errors import GuieError
from guie.kaggle.client import KaggleClient
from guie.kaggle.notebook import ZIP_NAME, write_notebook_folder
from guie.kaggle.poll import poll_until
from guie.kaggle.provenance import Provenance, file_sha256, git_commit, model_sha256
from guie.kaggle.settings import KaggleParams, Target, resolve_target
from guie.kaggle.status import fetch_submissions
from guie.kaggle.upload import upload_dataset, wait_dataset_ready, write_dataset_folder

STATE_FILE = "submit-state.json"


@dataclass
class SubmitState:
    """Progress of one artifact towards one target; any mismatch starts afresh."""

    sha256: str = ""
    dataset: str = ""
    kernel: str = ""
    competition: str = ""
    dataset_uploaded: bool = False
    dataset_ready: bool = False
    kernel_version: int | None = None
    kernel_complete: bool = False
    submission_ref: int | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.sha256, self.dataset, self.kernel, self.competition)

    @classmethod
    def load(cls, path: Path, target: Target, sha256: str) -> SubmitState:
        fresh = cls(sha256=sha256, dataset=target.dataset, kernel=target.kernel, competition=target.competition)
        try:
            raw = json.loads(path.read_text())
            state = cls(**{f.name: raw[f.name] for f in fields(cls)})
        except (OSError, ValueError, KeyError, TypeError):
            return fresh
        return state if state.key == fresh.key else fresh

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class SubmitResult:
    target: Target
    provenance: Provenance
    dataset_dir: Path
    notebook_dir: Path
    plan: list[str]
    dry_run: bool
    kernel_version: int | None = None
    submission_ref: int | None = None
    submission_status: str = ""  # pending / complete / error; "" when not submitted or not waited for
    public_score: float | None = None


class _NotebookFailed(GuieError):
    pass


def _verify(zip_path: Path, verify: Callable[[Path], object] | None) -> None:
    if verify is None:
        from guie.verify import verify_submission as verify
    report = verify(zip_path)
    if not report.passed:
        failures = "\n".join(f"  - {f}" for f in report.failures)
        raise GuieError(
            f"{zip_path}: fails `guie verify`, so it would not score:\n{failures}\n"
            "fix the export and re-run; --skip-verify submits anyway (experts only)"
        )


def _plan(target: Target, zip_path: Path, provenance: Provenance) -> list[str]:
    return [
        f"upload {zip_path} (sha256 {provenance.sha256[:12]}…) to private dataset {target.dataset}",
        f"push private notebook {target.kernel} (internet off) that writes /kaggle/working/{ZIP_NAME}",
        f"wait for the notebook run: {target.notebook_url}",
        f"submit that notebook version to {target.competition} as {provenance.describe()!r}",
    ]


def _push_notebook(client: KaggleClient, notebook_dir: Path, target: Target) -> int:
    response = client.call(
        f"push notebook {target.kernel}", lambda: client.api.kernels_push(str(notebook_dir)), idempotent=False
    )
    invalid = [*response.invalid_dataset_sources, *response.invalid_competition_sources]
    if response.error or invalid:
        problem = response.error or f"sources not found or not accessible: {invalid}"
        raise GuieError(f"push notebook {target.kernel}: Kaggle says: {client.redact(problem)}")
    if not response.version_number:
        raise GuieError(f"push notebook {target.kernel}: Kaggle returned no version number; see {target.notebook_url}")
    return int(response.version_number)


def _wait_notebook(client: KaggleClient, target: Target, version: int, console: Console) -> None:
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name = target.username
    request.kernel_slug = target.kernel_slug

    def fetch():
        with client.sdk() as kaggle:
            return kaggle.kernels.kernels_api_client.get_kernel_session_status(request)

    def check() -> tuple[bool, str]:
        response = client.call(f"check notebook {target.kernel}", fetch)
        status = response.status.name.lower()
        if status in ("error", "cancel_requested", "cancel_acknowledged"):
            message = client.redact(response.failure_message or status)
            raise _NotebookFailed(
                f"notebook {target.kernel} version {version} failed: {message}\nsee the log at {target.notebook_url}"
            )
        return status == "complete", status

    poll_until(
        f"notebook {target.kernel} version {version}",
        check,
        interval_s=client.params.poll_interval_s,
        max_interval_s=client.params.poll_max_interval_s,
        timeout_s=client.params.kernel_timeout_s,
        console=console,
        on_timeout=f"it keeps running on Kaggle ({target.notebook_url}); re-run `guie submit` to go on waiting",
    )


def _submit_code(client: KaggleClient, target: Target, version: int, provenance: Provenance) -> int:
    response = client.call(
        f"submit {target.kernel} version {version} to {target.competition}",
        lambda: client.api.competition_submit_code(
            file_name=ZIP_NAME,
            message=provenance.describe(),
            competition=target.competition,
            kernel=target.kernel,
            kernel_version=version,
            quiet=True,
        ),
        idempotent=False,
        competition=target.competition,
    )
    if not response.ref:
        raise GuieError(
            f"submit to {target.competition}: Kaggle says: {client.redact(response.message or 'no submission id returned')}"
        )
    return int(response.ref)


def _wait_score(client: KaggleClient, target: Target, ref: int, console: Console) -> float | None:
    found: dict = {}

    def check() -> tuple[bool, str]:
        rows = [r for r in fetch_submissions(client, target.competition, limit=50) if r.ref == ref]
        if not rows:
            return False, "not listed yet"
        found["row"] = rows[0]
        if rows[0].status == "error":
            raise GuieError(f"submission {ref} to {target.competition} failed: {rows[0].error or 'no reason given'}")
        return rows[0].status == "complete", rows[0].status

    poll_until(
        f"scoring submission {ref}",
        check,
        interval_s=client.params.poll_interval_s,
        max_interval_s=client.params.poll_max_interval_s,
        timeout_s=client.params.score_timeout_s,
        console=console,
        on_timeout="Kaggle is still scoring it; `guie status` shows the score when it is ready",
    )
    return found["row"].public_score


def _run_steps(
    client: KaggleClient,
    target: Target,
    provenance: Provenance,
    zip_in_folder: Path,
    notebook_dir: Path,
    state_path: Path,
    console: Console,
) -> SubmitState:
    """Do the steps this artifact has not finished yet, recording each as it completes."""
    state = SubmitState.load(state_path, target, provenance.sha256)
    if not state.dataset_uploaded:
        upload_dataset(client, zip_in_folder, target, provenance, console)
        state.dataset_uploaded = True
        state.save(state_path)
    else:
        console.print(f"dataset {target.dataset}: this artifact is already uploaded")
    if not state.dataset_ready:
        wait_dataset_ready(client, target, console)
        state.dataset_ready = True
        state.save(state_path)
    if state.kernel_version is None:
        state.kernel_version = _push_notebook(client, notebook_dir, target)
        state.save(state_path)
        console.print(f"notebook {target.kernel}: pushed version {state.kernel_version} ({target.notebook_url})")
    if not state.kernel_complete:
        try:
            _wait_notebook(client, target, state.kernel_version, console)
        except _NotebookFailed:
            state.kernel_version = None  # the next run pushes (and runs) the notebook again
            state.save(state_path)
            raise
        state.kernel_complete = True
        state.save(state_path)
        console.print(f"notebook {target.kernel} version {state.kernel_version}: complete")
    if state.submission_ref is None:
        state.submission_ref = _submit_code(client, target, state.kernel_version, provenance)
        state.save(state_path)
        console.print(
            f"submitted {target.kernel} version {state.kernel_version} to {target.competition}: submission {state.submission_ref}"
        )
    else:
        console.print(
            f"already submitted as {state.submission_ref} (delete {state_path} to submit this artifact again)"
        )
    return state


def submit(
    params: KaggleParams,
    zip_path: Path,
    work_dir: Path,
    *,
    params_hash: str,
    dry_run: bool = False,
    skip_verify: bool = False,
    wait_for_score: bool = False,
    console: Console,
    verify: Callable[[Path], object] | None = None,
    commit: str | None = None,
    client: KaggleClient | None = None,
) -> SubmitResult:
    zip_path, work_dir = Path(zip_path), Path(work_dir)
    if not zip_path.is_file():
        raise GuieError(f"{zip_path}: submission not found; run `guie export` first")
    if not skip_verify:
        _verify(zip_path, verify)
    provenance = Provenance(commit or git_commit(), params_hash, file_sha256(zip_path))
    client = client or KaggleClient(params)
    target = resolve_target(params, None if params.username else client.credentials.username)

    dataset_dir, notebook_dir = work_dir / "dataset", work_dir / "notebook"
    zip_in_folder = write_dataset_folder(dataset_dir, zip_path, target, provenance)
    write_notebook_folder(notebook_dir, target, params, provenance, model_sha256(zip_path))
    plan = _plan(target, zip_path, provenance)
    result = dict(target=target, provenance=provenance, dataset_dir=dataset_dir, notebook_dir=notebook_dir, plan=plan)
    if dry_run:
        console.print(f"[bold]guie submit --dry-run[/]: wrote {dataset_dir} and {notebook_dir}; would:")
        for i, step in enumerate(plan, 1):
            console.print(f"  {i}. {step}", highlight=False)
        return SubmitResult(**result, dry_run=True)

    state = _run_steps(client, target, provenance, zip_in_folder, notebook_dir, work_dir / STATE_FILE, console)
    score = None
    if wait_for_score:
        score = _wait_score(client, target, state.submission_ref, console)
        console.print(f"submission {state.submission_ref}: public score {score if score is not None else 'not shown'}")
    return SubmitResult(
        **result,
        dry_run=False,
        kernel_version=state.kernel_version,
        submission_ref=state.submission_ref,
        submission_status="complete" if wait_for_score else "",
        public_score=score,
    )
