"""The `guie` command: parse, call one library function, render. DVC stages call these commands."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from guie.errors import GuieError
from guie.layout import Layout
from guie.threads import process_env

app = typer.Typer(
    help="From raw image datasets to a scored GUIE submission.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: rich's panels show a `<bool>` placeholder on every flag
)
console = Console()

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
RootOpt = Annotated[Path, typer.Option("--root", help="Project root (where data/, models/ and submission/ live).")]
HERE = Layout(Path("."))  # the layout from the working directory, for defaults and help texts


def _setup(params_path: Path, root: Path, towers: bool = False):
    from guie.params.load import load_params

    return load_params(params_path, towers), Layout(root.resolve())


def _train_setup(params_path: Path, root: Path):
    """Params (every stage's geometry checked against the tower: a later stage's is refused before
    the first trains) and layout, after relaunching this command under torchrun when train.processes > 1."""
    from guie.runtime import launch_processes

    p, layout = _setup(params_path, root, towers=True)
    code = launch_processes(p.train, sys.argv[1:])
    if code is not None:
        raise typer.Exit(code)
    return p, layout


def _done(stage: str, started: float, summary: dict | None = None) -> None:
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun the first process reports
    if summary:
        table = Table(title=stage, show_header=False)
        for key, value in summary.items():
            table.add_row(str(key), f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
    console.print(f"[green]{stage} done[/] in {time.perf_counter() - started:.1f} s")


@app.command()
def download(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Materialise every configured data source under data/raw/<name>/."""
    from guie.stages.download import download_sources

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    _done("download", t, download_sources(p, layout.root, layout.raw, layout.downloads_dir))


@app.command()
def weights(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Write the backbone checkpoint (pretrained tag, local file, or seeded random init)."""
    from guie.stages.weights import materialise_weights

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    materialise_weights(p.model, p.seed, layout.weights, cache_dir=layout.weights_hub)
    _done("weights", t, {"model": p.model.name, "pretrained": p.model.pretrained or "random init"})


@app.command()
def manifest(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Validate every image and write data/manifest/manifest.csv (+ rejected.csv)."""
    from guie.stages.manifest import build_manifest

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    report = build_manifest(p, layout.root, layout.raw, layout.manifest, layout.rejected)
    _done("manifest", t, {k: json.dumps(v) if isinstance(v, dict) else v for k, v in report.items()})


@app.command()
def train(
    stage: Annotated[str, typer.Argument(help="The stage's name in train.stages (e.g. head).")],
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    fresh: Annotated[
        bool, typer.Option("--fresh", help=f"Ignore {HERE.checkpoint('train_<stage>')} and start over.")
    ] = False,
) -> None:
    """Train one stage of train.stages from the stage it starts from; resumes an interrupted run."""
    from guie.stages.train import TrainPaths, train_stage

    t, (p, layout) = time.perf_counter(), _train_setup(params, root)
    summary = train_stage(p, stage, TrainPaths.in_layout(layout, p, stage), fresh=fresh)
    _done(f"train {stage}", t, summary)


@app.command()
def twin(
    preset: Annotated[Path, typer.Argument(help="A recipe preset, e.g. params/recipes/first.yaml.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"The twin's scratch project folder (default {HERE.twin('<preset>')}).",
            show_default=False,
        ),
    ] = None,
    default: Annotated[
        Path | None,
        typer.Option(
            help="The embedded default whose data, tower and CPU settings the twin takes "
            "(default: params.yaml as committed).",
            show_default=False,
        ),
    ] = None,
    root: RootOpt = Path("."),
) -> None:
    """Write the preset's tiny twin as a scratch DVC project (its stages, losses, TTA and soups on synthetic
    data and a tiny tower); `dvc repro` in it leaves the project's params.yaml, outputs and dvc.lock alone."""
    from guie.recipes import NOT_QUALITY, write_twin_project

    folder = out or Layout(root).twin(preset.stem)
    twin_params = write_twin_project(preset, folder, root, default)
    console.print(f"[green]wrote[/] {folder}: stages {', '.join(twin_params['train']['stages'])}")
    console.print(f"run it: cd {folder} && dvc repro")
    console.print(f"note: {NOT_QUALITY}", soft_wrap=True)


@app.command()
def doctor(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """List everything `dvc repro` with these params needs that is missing here, at once (offline), with the
    plan's totals for this machine; exit 1 if any."""
    from rich.markup import escape

    from guie.doctor import diagnose, missing

    p, layout = _setup(params, root)
    findings = diagnose(p, layout, plan=True)
    marks = {"ok": "[green]ok[/]", "missing": "[red]MISSING[/]", "unchecked": "[yellow]check[/]"}
    for f in findings:
        console.print(f"{marks[f.status]} {escape(f.item)}: ", end="", soft_wrap=True)
        console.print(f.detail, markup=False, highlight=False, soft_wrap=True)
        if f.fix and f.status != "ok":
            console.print(f"    fix: {f.fix}", markup=False, highlight=False, soft_wrap=True)
    gaps = missing(findings)
    if gaps:
        items = escape(", ".join(f.item for f in gaps))
        console.print(f"[red]{len(gaps)} missing[/] ({items}): fix them, then `guie doctor` again", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]nothing missing[/] for {params}: `dvc repro` can run")


@app.command()
def plan(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    gpu: Annotated[
        str | None,
        typer.Option(
            help="GPU preset: h100, h200, a100-80gb, a100-40gb, l4, t4; or cpu (default: cpu when "
            "train.device is cpu, else h100).",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[int, typer.Option(help="GPUs on the machine (one training process each).", min=1)] = 1,
    cpus: Annotated[
        int | None,
        typer.Option(help="CPU cores (default: this machine's for cpu, 12 per GPU otherwise).", min=1),
    ] = None,
    mfu: Annotated[
        float | None,
        typer.Option(help="Share of the peak FLOPs reached (default 0.35 on GPUs, 0.7 of the measured rate on cpu)."),
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="The table as Markdown, fewer columns.")] = False,
) -> None:
    """Estimate every stage of `dvc repro` for these params on a machine: time, memory, disk, bottlenecks (reads
    params and the manifest; measures this machine's loader on a few of the manifest's images)."""
    from guie.plan.render import markdown_lines, render
    from guie.plan.run import make_plan

    p, layout = _setup(params, root)
    kind = gpu or ("cpu" if p.train.device == "cpu" else "h100")
    made = make_plan(p, layout, kind, gpus, cpus, mfu)
    for line in markdown_lines(made) if markdown else render(made, str(params)):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def metrics(
    root: RootOpt = Path("."),
    width: Annotated[int, typer.Option(help="Most characters a line.", min=60)] = 100,
) -> None:
    """Compare the workspace, its commit and its DVC experiments: mP@5, zero-shot, each stage's, changed params."""
    from guie.experiments import exp_show, rows_from_exp_show, summary_lines

    for line in summary_lines(rows_from_exp_show(exp_show(root)), width):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def pca(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Embed the PCA set and fit PCA to pca.dims."""
    from guie.stages.pca import PcaPaths, run_pca

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    _done("pca", t, run_pca(p, PcaPaths.in_layout(layout, p)))


@app.command()
def export(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Script the model (preprocessing inside) and write submission/submission.zip."""
    from guie.stages.export import export_submission

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    info = export_submission(
        p, layout.trained(p.train.final), layout.weights, layout.pca, layout.submission, layout.export_info
    )
    _done("export", t, info)


@app.command()
def verify(
    submission: Annotated[Path, typer.Argument(help="The submission.zip to check.")] = HERE.submission,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    target_torch: Annotated[str, typer.Option(help="Torch version of the scorer that must read the archive.")] = "1.11",
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    runtime: Annotated[
        Path | None,
        typer.Option(
            help="Also load and run the model in this Python (full path, e.g. a torch 1.11 venv's bin/python) "
            "and compare its outputs."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Training checkpoint: check parity with the eager pipeline (weights and PCA from --params/--root)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    estimate_time: Annotated[
        bool,
        typer.Option(
            "--estimate-time/--no-estimate-time",
            help="Time the host's call and extrapolate to the scorer's 205k images (information only, never fails).",
        ),
    ] = True,
    call_timeout: Annotated[
        float, typer.Option(help="Kill the model when one host call takes longer than this many seconds.", min=0.1)
    ] = 600.0,
) -> None:
    """Prove SUBMISSION meets the host's contract; exit 1 if any check fails."""
    from guie.stages.verify import VerifyLimits, verify_submission, write_report

    if report is not None and report.is_dir():
        raise GuieError(
            f"--report {report} is a directory; name a file to write the JSON report to, "
            f"e.g. {report / HERE.verify_report.name}"
        )
    reference = None
    if checkpoint is not None:
        from guie.errors import require_inputs
        from guie.stages.export import build_eager

        p, layout = _setup(params, root)
        require_inputs(
            "verify --checkpoint",
            (checkpoint, f"train@{checkpoint.stem}"),
            (layout.weights, "weights"),
            (layout.pca, "pca"),
        )
        reference = build_eager(p, checkpoint, layout.weights, layout.pca)
    result = verify_submission(
        submission,
        target_torch,
        runtime=runtime,
        reference=reference,
        estimate_time=estimate_time,
        limits=VerifyLimits(call_timeout=call_timeout),
    )
    payload = write_report(result, report) if report is not None else result.to_json()
    if as_json:
        sys.stdout.write(payload)
    else:
        table = Table(title=f"guie verify {submission}")
        for col in ("check", "result", "detail", "fix"):
            table.add_column(col)
        for c in result.checks:
            outcome = (
                "[yellow]skip[/]"
                if c.skipped
                else "[blue]info[/]"
                if c.info
                else "[green]pass[/]"
                if c.passed
                else "[red]FAIL[/]"
            )
            table.add_row(c.name, outcome, c.detail, c.fix)
        console.print(table)
        console.print("[green]submission OK[/]" if result.passed else f"[red]{len(result.failures)} check(s) failed[/]")
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Held-out retrieval mP@5 of the submission vs the zero-shot baseline, into metrics/."""
    from guie.stages.evaluate import EvaluatePaths, run_evaluate

    t, (p, layout) = time.perf_counter(), _setup(params, root)
    paths = EvaluatePaths(
        project_root=layout.root,
        manifest=layout.manifest,
        weights=layout.weights,
        submission=layout.submission,
        out_json=layout.evaluate_report,
        plots_dir=layout.metrics("evaluate"),
    )
    m = run_evaluate(p, paths)
    _done("evaluate", t, {k: json.dumps(v) if isinstance(v, dict) else v for k, v in m.items()})


@app.command()
def submit(
    params: ParamsOpt = Path("params.yaml"),
    root: RootOpt = Path("."),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the dataset and notebook folders, print the plan, call nothing.")
    ] = False,
    skip_verify: Annotated[
        bool, typer.Option("--skip-verify", help="Experts only: upload even if `guie verify` fails.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the public score.")] = False,
    again: Annotated[
        bool, typer.Option("--again", help="Submit even if Kaggle already has a submission of this artifact.")
    ] = False,
) -> None:
    """Upload submission.zip, push the submission notebook, run it and submit to the competition (once per artifact)."""
    from guie.kaggle.submit import SubmitRequest
    from guie.kaggle.submit import submit as run
    from guie.params.fingerprint import artifact_hash
    from guie.stages.verify import verify_submission

    p, layout = _setup(params, root)
    request = SubmitRequest(
        zip_path=layout.submission,
        work_dir=layout.submit_work,
        params_hash=artifact_hash(p),
        dry_run=dry_run,
        skip_verify=skip_verify,
        wait_for_score=wait,
        again=again,
    )
    result = run(p.kaggle, request, console=console, verify=verify_submission)
    if result.already_submitted:
        console.print(f"nothing new sent: this artifact is already submission {result.submission_ref}")
    elif not result.dry_run:
        console.print(
            f"[green]submitted[/] {result.target.kernel} version {result.kernel_version} "
            f"as submission {result.submission_ref}"
        )


@app.command()
def status(
    params: ParamsOpt = Path("params.yaml"), limit: Annotated[int, typer.Option(help="How many submissions.")] = 20
) -> None:
    """Recent submissions with status, scores and the commit/params/artifact behind each."""
    from guie.kaggle.status import error_lines, recent_submissions, submissions_table
    from guie.params.load import load_params

    rows = recent_submissions(load_params(params).kaggle, limit=limit)
    console.print(submissions_table(rows))
    for line in error_lines(rows):
        console.print(line, highlight=False)


def main() -> None:
    # TorchScript serialises some constants in hash order: fix the hash seed so exports are byte-identical;
    # and the thread policy's OpenMP settings, read once when torch loads (guie/threads.py)
    env = process_env(os.environ) | {"PYTHONHASHSEED": "0"}
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, "-m", "guie", *sys.argv[1:]], env)
    try:
        app(prog_name="guie")  # not `python -m guie`, the re-exec above
    except GuieError as err:
        # soft_wrap: a long message stays one line in logs and pipes (rich would wrap it at 80 columns)
        Console(stderr=True).print(f"error: {err}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
