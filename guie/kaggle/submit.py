"""`guie submit`: from a verified submission.zip to a scored code submission, resumably.

Steps: verify -> upload the zip as a private dataset -> wait until Kaggle processed it -> push
the notebook -> wait for its run -> submit that notebook version -> (optionally) wait for the
score. Each finished step is recorded in `<work_dir>/submit-state.json` (keyed by the artifact's
sha256 and the target names), so re-running after any failure carries on where it stopped.

Exactly once does not rest on that file (a fresh clone has none): Kaggle is asked first. The
artifact's sha256 is in every submission description, dataset version note and notebook, so a
submission of this artifact that did not fail scoring means "already submitted as N" (unless
`again`), a newest dataset version holding it is not uploaded again, and a newest notebook version
made for it is not pushed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from guie.atomic import write_text
from guie.errors import GuieError
from guie.kaggle.client import KaggleClient
from guie.kaggle.notebook import ZIP_NAME, write_notebook_folder
from guie.kaggle.poll import poll_until
from guie.kaggle.provenance import Provenance, file_sha256, git_commit, model_sha256
from guie.kaggle.settings import Target, resolve_target
from guie.kaggle.status import SubmissionRow, fetch_submissions, submissions_of
from guie.kaggle.upload import dataset_on_kaggle, upload_dataset, wait_dataset_ready, write_dataset_folder
from guie.params.kaggle import KaggleParams

STATE_FILE = "submit-state.json"
# the dataset and notebook owner a dry run without credentials (and no kaggle.username) shows
PLACEHOLDER_OWNER = "your-kaggle-username"


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
            state = cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})
        except (OSError, ValueError, KeyError, TypeError):
            return fresh
        return state if state.key == fresh.key else fresh

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True, kw_only=True)
class SubmitRequest:
    """What `guie submit` is asked to do: the artifact, the folder it works in, and how."""

    zip_path: Path
    work_dir: Path  # the dataset and notebook folders and the state file
    params_hash: str  # the params behind the artifact, for its provenance
    commit: str | None = None  # the commit behind it; None: the checkout's
    dry_run: bool = False  # write the folders and show the plan; call nothing
    skip_verify: bool = False
    wait_for_score: bool = False
    again: bool = False  # submit even if Kaggle has a live submission of this artifact


@dataclass(frozen=True, kw_only=True)
class _Folders:
    """What a run uploads and pushes: the zip inside the dataset folder, the notebook folder, and
    whether the notebook runs on a GPU."""

    zip_in_folder: Path
    notebook_dir: Path
    enable_gpu: bool


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
    already_submitted: bool = False  # this run submitted nothing: Kaggle already has `submission_ref`


class _NotebookFailed(GuieError):
    pass


def _verify(zip_path: Path, verify: Callable[[Path], object]) -> None:
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


_NOTEBOOK_FAILED = ("error", "cancel_requested", "cancel_acknowledged")


def _session_status(client: KaggleClient, target: Target):
    """The notebook's latest run, as Kaggle reports it."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = ApiGetKernelSessionStatusRequest()
    request.user_name = target.username
    request.kernel_slug = target.kernel_slug
    return client.rpc(
        f"check notebook {target.kernel}",
        lambda kaggle: kaggle.kernels.kernels_api_client.get_kernel_session_status(request),
    )


def _wait_notebook(client: KaggleClient, target: Target, version: int, console: Console) -> None:
    def check() -> tuple[bool, str]:
        response = _session_status(client, target)
        status = response.status.name.lower()
        if status in _NOTEBOOK_FAILED:
            message = client.redact(response.failure_message or status)
            raise _NotebookFailed(
                f"notebook {target.kernel} version {version} failed: {message}\nsee the log at {target.notebook_url}"
            )
        return status == "complete", status

    poll_until(
        f"notebook {target.kernel} version {version}",
        check,
        params=client.params,
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
            f"submit to {target.competition}: "
            f"Kaggle says: {client.redact(response.message or 'no submission id returned')}"
        )
    return int(response.ref)


def _wait_score(client: KaggleClient, target: Target, ref: int, console: Console) -> float | None:
    found: dict = {}

    def check() -> tuple[bool, str]:
        rows = [
            r
            for r in fetch_submissions(client, target.competition, limit=client.params.submissions_scanned)
            if r.ref == ref
        ]
        if not rows:
            return False, "not listed yet"
        found["row"] = rows[0]
        if rows[0].status == "error":
            raise GuieError(
                f"submission {ref} to {target.competition} failed scoring: {rows[0].error or 'Kaggle gave no reason'}\n"
                "it does not count as submitted: fix the cause, then `guie submit` submits this artifact again"
            )
        return rows[0].status == "complete", rows[0].status

    poll_until(
        f"scoring submission {ref}",
        check,
        params=client.params,
        timeout_s=client.params.score_timeout_s,
        console=console,
        on_timeout="Kaggle is still scoring it; `guie status` shows the score when it is ready",
    )
    return found["row"].public_score


def _latest_kernel_for(client: KaggleClient, target: Target, sha256: str, enable_gpu: bool) -> int | None:
    """The notebook's newest version number if it was made for this artifact (and GPU setting)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelRequest

    request = ApiGetKernelRequest()
    request.user_name = target.username
    request.kernel_slug = target.kernel_slug

    response = client.rpc(
        f"look up notebook {target.kernel}",
        lambda kaggle: kaggle.kernels.kernels_api_client.get_kernel(request),
        allow=(404,),
    )
    if response is None or response.metadata is None or response.blob is None:
        return None
    source = response.blob.source or ""
    made_for = Provenance.parse(source)
    if made_for is None or made_for.sha256 != sha256 or bool(response.metadata.enable_gpu) != enable_gpu:
        return None
    return response.metadata.current_version_number or None


def _kernel_failed(client: KaggleClient, target: Target) -> bool:
    return _session_status(client, target).status.name.lower() in _NOTEBOOK_FAILED


def _already_submitted(client: KaggleClient, target: Target, sha256: str, console: Console) -> SubmissionRow | None:
    """guie's newest submission of this artifact that did not fail scoring; failed ones are
    reported (with Kaggle's reason) and do not count."""
    rows = submissions_of(client, target.competition, sha256, client.params.submissions_scanned)
    for row in rows:
        if row.status != "error":
            return row
    for row in rows[:1]:
        console.print(
            f"submission {row.ref} of this artifact failed scoring: {escape(row.error or 'Kaggle gave no reason')}; "
            "it does not count, so this run submits again",
            highlight=False,
        )
    return None


def _run_steps(
    client: KaggleClient, target: Target, provenance: Provenance, folders: _Folders, state_path: Path, console: Console
) -> SubmitState:
    """Do the steps this artifact has not finished yet (here or, as Kaggle shows, anywhere),
    recording each as it completes."""
    state = SubmitState.load(state_path, target, provenance.sha256)
    state.submission_ref = None  # the caller found no live submission on Kaggle: make one
    if not state.dataset_uploaded:
        on_kaggle = dataset_on_kaggle(client, target, provenance.sha256)
        if on_kaggle is not None and on_kaggle.holds:
            console.print(f"dataset {target.dataset}: version {on_kaggle.version} already holds this artifact")
        else:
            upload_dataset(client, folders.zip_in_folder, target, provenance, console, on_kaggle)
        state.dataset_uploaded = True
        state.save(state_path)
    if not state.dataset_ready:
        wait_dataset_ready(client, target, console)
        state.dataset_ready = True
        state.save(state_path)
    if state.kernel_version is None:
        latest = _latest_kernel_for(client, target, provenance.sha256, folders.enable_gpu)
        if latest is not None and not _kernel_failed(client, target):
            state.kernel_version = latest
            console.print(f"notebook {target.kernel}: version {latest} was already pushed for this artifact")
        else:
            state.kernel_version = _push_notebook(client, folders.notebook_dir, target)
            state.kernel_complete = False
            console.print(f"notebook {target.kernel}: pushed version {state.kernel_version} ({target.notebook_url})")
        state.save(state_path)
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
    state.submission_ref = _submit_code(client, target, state.kernel_version, provenance)
    state.save(state_path)
    console.print(
        f"submitted {target.kernel} version {state.kernel_version} to {target.competition}: "
        f"submission {state.submission_ref}"
    )
    return state


def artifact_needs_gpu(zip_path: Path) -> str | None:
    """The CUDA device the artifact's weights name (e.g. "cuda:0"), or None when all are on the CPU."""
    import zipfile

    from guie.contract import MODEL_MEMBER
    from guie.torchscript_archive import tensor_placements

    try:
        with zipfile.ZipFile(zip_path) as zf:
            archive = zf.read(MODEL_MEMBER)
    except (KeyError, zipfile.BadZipFile):
        raise GuieError(
            f"{zip_path}: no {MODEL_MEMBER} at the zip's root; run `guie export` (and `guie verify`)"
        ) from None
    devices = sorted({device for _, device in tensor_placements(archive) if device.startswith("cuda")})
    return devices[0] if devices else None


def resolve_enable_gpu(params: KaggleParams, zip_path: Path) -> bool:
    """kaggle.enable_gpu, with "auto" following the artifact's placement; false with a CUDA
    artifact is refused: the host loads the model with a plain torch.jit.load, which needs the
    GPU the weights name, so a CPU kernel risks a scoring run that fails after hours."""
    device = artifact_needs_gpu(zip_path)
    if params.enable_gpu == "auto":
        return device is not None
    if device is not None and params.enable_gpu is False:
        raise GuieError(
            f"params.yaml: kaggle.enable_gpu is false but {zip_path.name}'s weights are on {device} "
            "(export.device: cuda); the scorer's plain torch.jit.load needs that GPU: set kaggle.enable_gpu: auto "
            "(or true), or export with export.device: cpu"
        )
    return bool(params.enable_gpu)


def _owner(params: KaggleParams, client: KaggleClient, dry_run: bool, console: Console) -> str:
    """kaggle.username, else the credentials' user; a dry run without either shows PLACEHOLDER_OWNER
    (it calls nothing, so it needs no credentials)."""
    if params.username:
        return params.username
    try:
        return client.credentials.username
    except GuieError as err:
        if not dry_run:
            raise
        console.print(escape(str(err)), highlight=False)
        return PLACEHOLDER_OWNER


def submit(
    params: KaggleParams,
    request: SubmitRequest,
    *,
    console: Console,
    verify: Callable[[Path], object],
    client: KaggleClient | None = None,
) -> SubmitResult:
    """Carry out `request`. A live submission of the artifact on Kaggle is looked up before `verify`
    (`guie verify`) runs: a repeated run that sends nothing need not verify."""
    zip_path, work_dir = Path(request.zip_path), Path(request.work_dir)
    dry_run, wait_for_score = request.dry_run, request.wait_for_score
    if not zip_path.is_file():
        raise GuieError(f"{zip_path}: submission not found; run `guie export` first")
    provenance = Provenance(request.commit or git_commit(), request.params_hash, file_sha256(zip_path))
    client = client or KaggleClient(params)
    owner = _owner(params, client, dry_run, console)
    placeholder = owner if owner == PLACEHOLDER_OWNER and not params.username else ""
    target = resolve_target(params, owner)
    dataset_dir, notebook_dir = work_dir / "dataset", work_dir / "notebook"
    plan = _plan(target, zip_path, provenance)
    result = dict(target=target, provenance=provenance, dataset_dir=dataset_dir, notebook_dir=notebook_dir, plan=plan)
    state_path = work_dir / STATE_FILE

    prior = None if dry_run or request.again else _already_submitted(client, target, provenance.sha256, console)
    if prior is not None:
        state = SubmitState.load(state_path, target, provenance.sha256)
        state.submission_ref = prior.ref
        state.save(state_path)
        console.print(
            f"already submitted as {prior.ref} ({prior.status}); `guie submit --again` submits this artifact anyway",
            highlight=False,
        )
        score, status = prior.public_score, prior.status
        if wait_for_score and prior.status != "complete":
            score, status = _wait_score(client, target, prior.ref, console), "complete"
            console.print(f"submission {prior.ref}: public score {score if score is not None else 'not shown'}")
        return SubmitResult(
            **result,
            dry_run=False,
            kernel_version=state.kernel_version,
            submission_ref=prior.ref,
            submission_status=status,
            public_score=score,
            already_submitted=True,
        )

    if not request.skip_verify:
        _verify(zip_path, verify)
    enable_gpu = resolve_enable_gpu(params, zip_path)
    zip_in_folder = write_dataset_folder(dataset_dir, zip_path, target, provenance)
    write_notebook_folder(notebook_dir, target, enable_gpu, provenance, model_sha256(zip_path))
    if dry_run:
        console.print(f"[bold]guie submit --dry-run[/]: wrote {dataset_dir} and {notebook_dir}; would:")
        if placeholder:
            console.print(
                f"  (no Kaggle credentials, so the owner {placeholder!r} below is a placeholder: a real run uses "
                "kaggle.username or your credentials' user)",
                highlight=False,
            )
        for i, step in enumerate(plan, 1):
            console.print(f"  {i}. {step}", highlight=False)
        return SubmitResult(**result, dry_run=True)

    folders = _Folders(zip_in_folder=zip_in_folder, notebook_dir=notebook_dir, enable_gpu=enable_gpu)
    state = _run_steps(client, target, provenance, folders, state_path, console)
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
