"""`guie verify`: prove a submission.zip meets the host's contract before it costs a day on Kaggle.

Each check says what is wrong and how to fix it. The model is called exactly as the scorer calls
it: one RGB uint8 image [1,3,H,W] at its original size, output flattened from `out[0]`.
Optional checks: the same calls in another interpreter (`runtime`, e.g. a torch 1.11 venv) compared
with this torch, parity with the eager pipeline (`reference`), and the scorer's time for 205k images.

`verify_submission` runs CHECKS in order, each a function of the run's shared state and the report.
The zip and the archive are read here, streamed and capped; the model is loaded and called only in a
fenced child interpreter (guie/verification/: child.py, run by path, and harness.py, which watches it).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from guie.atomic import write_text
from guie.contract import (
    CONVERTED_MIN_COSINE,
    EMBEDDING_DIMS,
    MODEL_MEMBER,
    PARITY_TOLERANCE,
    SCORER_IMAGES,
    SCORER_LIMIT_S,
    TARGET_TORCH,
    host_decode,
)
from guie.errors import GuieError
from guie.scorer_budget import budget_for
from guie.threads import fixed_numerics
from guie.torchscript_archive import (
    LEGACY_MAX_ARCHIVE_BYTES,
    LEGACY_MAX_FILE_VERSION,
    archive_version,
    legacy_problems,
    tensor_placements,
)
from guie.verification.harness import (
    CALL_TIMEOUT_S,
    TIMING_SIZE,
    ChildSettings,
    HostCallError,
    HostCalls,
    run_host_calls,
    stop_on_signals,
)
from guie.verification.report import Check, VerifyReport

__all__ = ["CALL_TIMEOUT_S", "Check", "HostCallError", "HostCalls", "VerifyReport", "run_host_calls"]

NORM_TOLERANCE = 1e-4
# max |runtime - this torch| per embedding value (unit vectors). torch 1.11's antialiased bicubic
# kernel rounds differently (~1e-4 on a 0..255 scale); measured effect on embeddings: 1.3e-7 (tiny
# ViT), 2.9e-7 (random ViT-B-32). 1e-4 leaves room for deep trained towers and still catches a
# changed op (a different GELU or attention moves values by 1e-3 and more).
RUNTIME_TOLERANCE = 1e-4
# Two identical calls on a GPU may round differently: TorchScript's profiling executor re-optimises the
# graph after the first calls (fused kernels), and cuBLAS picks kernels per call; seen on an H200 (float16
# tiny ViT, torch 2.11, the 1x1 image). A model left in train mode (dropout) moves a unit embedding far more
# (cosine ~0.9), so a GPU pair passes at cosine >= 1 - 1e-4; a CPU pair must be equal.
REPEAT_MIN_COSINE_GPU = 1 - 1e-4
# A hostile zip must not exhaust memory or disk: saved_model.pt is unpacked to a file, streaming,
# and refused above the largest archive torch 1.11 reads or when it inflates like a zip bomb
# (TorchScript weights barely compress: ~1.1x; a bomb of zeros inflates ~1000x).
MAX_MODEL_BYTES = LEGACY_MAX_ARCHIVE_BYTES
MAX_COMPRESSION_RATIO = 50
# Different images (sizes, noise, grayscale, CMYK) must give different embeddings: a model whose
# outputs all agree within this ignores its input, meets the contract and would score about 0.
DISTINCT_MIN_DIFFERENCE = 1e-6


def _jpeg(mode: str, size: tuple[int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def host_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """Odd inputs the scorer may send: tiny, extreme aspect ratios, the 130k set's size, and real
    JPEGs stored as grayscale and CMYK that the host converts to RGB."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        f"{h}x{w}": torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)
        for h, w in [(1, 1), (37, 2000), (2000, 37), (512, 512)]
    }
    inputs["grayscale jpeg"] = host_decode(io.BytesIO(_jpeg("L", (300, 200), seed))).unsqueeze(0)
    inputs["cmyk jpeg"] = host_decode(io.BytesIO(_jpeg("CMYK", (200, 300), seed + 1))).unsqueeze(0)
    return inputs


def repeat_problem(out: torch.Tensor, again: torch.Tensor, on_gpu: bool) -> str | None:
    """Why two identical calls' outputs disagree, or None: equal on a CPU, equal up to rounding on a GPU."""
    if torch.equal(out, again):
        return None
    if on_gpu and out.shape == again.shape:
        cosine = float(torch.nn.functional.cosine_similarity(out.double().flatten(), again.double().flatten(), dim=0))
        if cosine >= REPEAT_MIN_COSINE_GPU:
            return None
        return f"differs between two identical calls (cosine {cosine:.6f}, below {REPEAT_MIN_COSINE_GPU})"
    return "differs between two identical calls"


def _check_output(
    report: VerifyReport, name: str, out: torch.Tensor, again: torch.Tensor, on_gpu: bool = False
) -> None:
    """The host's call on one input: `out` and `again` are two identical calls' outputs."""
    if out.dim() != 2 or out.shape[0] != 1:
        report.add(
            f"call {name}",
            False,
            f"output shape {list(out.shape)}; the host flattens out[0], so it must be [1, {EMBEDDING_DIMS}]",
            "keep the batch dimension in forward's output",
        )
        return
    emb = torch.flatten(out[0])
    problems = []
    if emb.numel() != EMBEDDING_DIMS:
        problems.append(f"{emb.numel()} values instead of {EMBEDDING_DIMS}")
    if emb.dtype != torch.float32:
        problems.append(f"dtype {emb.dtype} instead of float32")
    if not torch.isfinite(emb).all():
        problems.append("non-finite values")
    else:
        norm = float(emb.double().norm())
        if abs(norm - 1.0) > NORM_TOLERANCE:
            problems.append(f"L2 norm {norm:.6f}, not 1 within {NORM_TOLERANCE}")
    repeat = repeat_problem(out, again, on_gpu)
    if repeat:
        problems.append(repeat)
    report.add(
        f"call {name}",
        not problems,
        "; ".join(problems) or f"[1, {EMBEDDING_DIMS}] float32, unit norm, repeatable",
        "embed to 64 dims (PCA) and L2-normalise in forward, in eval mode",
    )


def _describe(placements: set[tuple[str, str]]) -> str:
    return ", ".join(f"{dtype} on {device}" for dtype, device in sorted(placements)) or "no tensors"


def _check_placements(report: VerifyReport, placements: set[tuple[str, str]]) -> None:
    devices = {device for _, device in placements}
    stray = sorted(d for d in devices if d not in ("cpu", "cuda", "cuda:0"))
    report.add(
        "weights",
        not stray,
        f"tensors on {stray}; the scorer's machine has one GPU (cuda:0)" if stray else _describe(placements),
        "export on the first GPU (export.device: cuda puts the weights on cuda:0)",
    )


@torch.no_grad()
def _check_parity(
    report: VerifyReport,
    reference: Callable[[torch.Tensor], torch.Tensor],
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    converted: str,
) -> None:
    """`converted`: "" for a float32 artifact run on the CPU, else what makes it round differently."""
    if not outputs:
        report.add(
            "parity with eager pipeline",
            False,
            "no host call returned a tensor to compare",
            "fix the failing calls first",
        )
        return
    worst, cosine = 0.0, 1.0
    for name, out in outputs.items():
        expected = reference(inputs[name]).cpu()
        if out.shape != expected.shape:
            report.add(
                "parity with eager pipeline",
                False,
                f"{name}: output shape {list(out.shape)}, eager pipeline {list(expected.shape)}",
                "export from the same checkpoint, PCA and params",
            )
            return
        worst = max(worst, float((out.float() - expected).abs().max()))
        cosine = min(cosine, float(torch.nn.functional.cosine_similarity(out.float(), expected).min()))
    values = {"max_abs_error": worst, "min_cosine": cosine}
    summary = f"max |zip - eager| {worst:.2e}, min cosine {cosine:.6f} over {len(outputs)} host inputs"
    fix = (
        "re-export from this checkpoint, PCA and params (`dvc repro export`); "
        "if they match, this is a bug in guie's export"
    )
    if converted:
        report.add(
            "parity with eager pipeline",
            cosine >= CONVERTED_MIN_COSINE,
            f"{converted}: {summary} (needs cosine >= {CONVERTED_MIN_COSINE})",
            fix,
            values=values,
        )
    else:
        report.add(
            "parity with eager pipeline",
            worst <= PARITY_TOLERANCE,
            f"{summary} (needs <= {PARITY_TOLERANCE})",
            fix,
            values=values,
        )


def _other_interpreter_env() -> dict[str, str]:
    # the other interpreter must not import this one's packages
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"PYTHONWARNINGS": "ignore"}


def _check_runtime(report: VerifyReport, run: _Run, python: Path) -> None:
    """The same calls in another interpreter (e.g. torch 1.11) give the same outputs as this torch's."""
    outputs, half, timeout = run.ours.outputs, run.half, run.limits.runtime_timeout
    name = f"runtime {python}"
    fix = (
        "export with guie's legacy-safe modules and float32 weights; "
        "a float16 artifact runs only on a GPU (run --runtime on a GPU machine)"
    )
    try:
        theirs = run_host_calls(
            python,
            run.model_path,
            run.inputs,
            child_settings=ChildSettings(
                call_timeout=timeout,
                load_timeout=timeout,
                memory_headroom_bytes=run.limits.memory_headroom_bytes,
                env=_other_interpreter_env(),
            ),
        )
    except HostCallError as err:
        report.add(name, False, str(err), fix)
        return
    version = theirs.torch
    raised: dict[str, list[str]] = {}
    for key, message in theirs.errors.items():
        raised.setdefault(message, []).append(key)
    errors = [f"torch {version}: {', '.join(keys)} raised {message}" for message, keys in raised.items()]
    worst = 0.0
    for key, ours in outputs.items():
        if key in theirs.errors:
            continue
        if key not in theirs.outputs or theirs.outputs[key].shape != ours.shape:
            shape = list(theirs.outputs[key].shape) if key in theirs.outputs else None
            errors.append(f"{key}: output shape {shape} there, {list(ours.shape)} here")
            continue
        worst = max(worst, float((theirs.outputs[key].float() - ours.float()).abs().max()))
    tolerance = 1e-2 if half else RUNTIME_TOLERANCE  # float16 kernels differ between versions far more
    if worst > tolerance:
        errors.append(f"outputs differ from torch {torch.__version__} by {worst:.2e} (> {tolerance})")
    detail = (
        "; ".join(errors)[:800]
        if errors
        else f"torch {version} loads and runs it; max |{version} - {torch.__version__}| {worst:.2e} "
        f"over {len(outputs)} host inputs (tolerance {tolerance})"
    )
    report.add(name, not errors, detail, fix, values={"max_abs_error": worst})


def check_scorer_time(
    report: VerifyReport,
    seconds: float | None,
    where: str,
    targets_cuda: bool,
    half: bool,
    limit_s: float = SCORER_LIMIT_S,
) -> None:
    """The measured per-image latency extrapolated to SCORER_IMAGES: information, never a verdict.

    A time measured here depends on this machine and on whatever else runs on it (on 2 shared
    cores torch's threads can slow 25x), and the scorer runs on its own GPU, so the estimate
    advises and never fails `verify` or blocks `guie submit`."""
    name = "scorer time"
    if seconds is None:
        report.add_info(
            name,
            "not measured: the artifact targets cuda and this machine has no GPU; "
            "run `guie verify` on a GPU machine to estimate it",
            skipped=True,
        )
        return
    total = seconds * SCORER_IMAGES
    detail = (
        f"{seconds * 1000:.1f} ms per {TIMING_SIZE[0]}x{TIMING_SIZE[1]} image on {where} -> {total / 3600:.2f} h for "
        f"{SCORER_IMAGES:,} images (limit {limit_s / 3600:.0f} h; the host's JPEG decoding comes on top); "
        "information only"
    )
    if total > limit_s:
        if targets_cuda:
            advice = "use a smaller model or image size" if half else "set export.half: true, or use a smaller model"
        else:
            advice = "set export.device: cuda (the scorer has a GPU), or use a smaller model"
        detail += f": at this speed the scorer would time out; if this machine was not busy, {advice}"
    report.add_info(name, detail, values={"seconds_per_image": seconds, "estimated_hours": total / 3600})


def _member_problem(info: zipfile.ZipInfo, max_bytes: int) -> str | None:
    """Why the zip's model member is refused before anything is unpacked (its header's sizes)."""
    if info.file_size > max_bytes:
        return (
            f"{info.filename} would unpack to {info.file_size / 2**30:.2f} GiB, "
            f"above the {max_bytes / 2**30:.2f} GiB limit (the largest archive torch 1.11 reads)"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > MAX_COMPRESSION_RATIO:
        return (
            f"{info.filename} inflates {ratio:.0f}x ({info.compress_size:,} -> {info.file_size:,} bytes), above the "
            f"{MAX_COMPRESSION_RATIO}x a TorchScript archive can reach: a zip bomb, or not a model"
        )
    return None


def _unpack_model(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, max_bytes: int) -> None:
    """Stream the member to `dest`, counting what is written (the header's size is not trusted)."""
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while block := src.read(1 << 20):
            written += len(block)
            if written > min(info.file_size, max_bytes):
                raise zipfile.BadZipFile(
                    f"{info.filename} inflates past the {min(info.file_size, max_bytes):,} bytes its header declares"
                )
            out.write(block)


def _check_target(target_torch: str) -> None:
    if target_torch not in LEGACY_MAX_FILE_VERSION:
        raise GuieError(
            f"--target-torch {target_torch}: guie knows what torch {', '.join(sorted(LEGACY_MAX_FILE_VERSION))} "
            f"reads (the scorer's); use --target-torch {TARGET_TORCH}"
        )


@dataclass(frozen=True, kw_only=True)
class VerifyLimits:
    """What verify allows the model: `call_timeout` s for each step of a host call in the fenced child
    (and `runtime_timeout` s in the `runtime` interpreter), `max_model_bytes` unpacked, and
    `memory_headroom_bytes` of memory after torch is imported (None: see
    `guie.verification.harness.memory_headroom`)."""

    call_timeout: float = CALL_TIMEOUT_S
    runtime_timeout: float = CALL_TIMEOUT_S
    max_model_bytes: int = MAX_MODEL_BYTES
    memory_headroom_bytes: int | None = None


@dataclass
class _Run:
    """What the checks share: the options, then what earlier checks found."""

    zip_path: Path
    tmp: Path
    target_torch: str
    runtime: Path | None
    reference: Callable[[torch.Tensor], torch.Tensor] | None
    estimate_time: bool
    limits: VerifyLimits
    model_path: Path = Path()
    placements: set[tuple[str, str]] = field(default_factory=set)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    ours: HostCalls | None = None

    @property
    def targets_cuda(self) -> bool:
        return any(device.startswith("cuda") for _, device in self.placements)

    @property
    def half(self) -> bool:
        return any(dtype == "float16" for dtype, _ in self.placements)


def _zip_problem(zf: zipfile.ZipFile, max_bytes: int) -> str | None:
    info = zf.getinfo(MODEL_MEMBER)
    if info.flag_bits & 0x1:
        return f"{MODEL_MEMBER} is encrypted (password-protected); the host opens it without a password"
    return _member_problem(info, max_bytes)


def check_zip(run: _Run, report: VerifyReport) -> bool:
    """Exactly saved_model.pt at the zip's root, unpacked (streaming, capped) to the run's temp folder."""
    zip_path = run.zip_path
    if zip_path.is_dir():
        return report.add(
            "zip",
            False,
            f"{zip_path} is a directory, not a zip",
            f"pass the zip file itself, e.g. {zip_path / 'submission.zip'}",
        )
    if not zip_path.is_file():
        return report.add("zip", False, f"{zip_path} does not exist", "run `dvc repro export` (or `guie export`)")
    run.model_path = run.tmp / MODEL_MEMBER
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            if MODEL_MEMBER in names:
                if problem := _zip_problem(zf, run.limits.max_model_bytes):
                    return report.add("zip", False, problem, f"zip the {MODEL_MEMBER} that `guie export` wrote")
                _unpack_model(zf, zf.getinfo(MODEL_MEMBER), run.model_path, run.limits.max_model_bytes)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as err:
        return report.add(
            "zip", False, f"not a valid zip archive ({err})", f"zip a single {MODEL_MEMBER} at the archive root"
        )
    if names != [MODEL_MEMBER]:
        report.add(
            "zip",
            False,
            f"members {names[:5]}{' ...' if len(names) > 5 else ''}; "
            f"the host expects exactly ['{MODEL_MEMBER}'] at the root",
            f"zip only {MODEL_MEMBER}, with no folder prefix",
        )
        return MODEL_MEMBER in names
    return report.add("zip", True, f"exactly {MODEL_MEMBER} at the root")


def check_archive(run: _Run, report: VerifyReport) -> bool:
    """Static checks of the TorchScript archive (every record read streamed and capped) and where its
    tensors live; an archive that cannot be read statically is not handed to torch."""
    name = f"readable by torch {run.target_torch}"
    try:
        version = archive_version(run.model_path)
        problems = legacy_problems(run.model_path, run.target_torch)
        run.placements = tensor_placements(run.model_path)
    except Exception as err:
        return report.add(
            name,
            False,
            f"cannot read the TorchScript archive ({type(err).__name__}: {err})",
            "export with torch.jit.save",
        )
    report.add(
        name,
        not problems,
        "; ".join(problems)
        or f"archive format version {version}, a container and no ops unknown to {run.target_torch}",
        "export with guie's legacy-safe modules (erf GELU, matmul attention, direct bicubic resize)",
    )
    _check_placements(report, run.placements)
    return True


def check_load(run: _Run, report: VerifyReport) -> bool:
    """The model loaded and called on every host input in a fenced child of this interpreter."""
    run.inputs = host_inputs()
    timing = 5 if run.estimate_time and (torch.cuda.is_available() or not run.targets_cuda) else 0
    try:
        run.ours = run_host_calls(
            sys.executable,
            run.model_path,
            run.inputs,
            timing_calls=timing,
            count_flops=True,
            child_settings=ChildSettings(
                call_timeout=run.limits.call_timeout,
                load_timeout=max(run.limits.call_timeout, CALL_TIMEOUT_S),
                memory_headroom_bytes=run.limits.memory_headroom_bytes,
            ),
        )
    except HostCallError as err:
        return report.add(
            "load" if err.step in ("start-up", "load") else err.step,
            False,
            str(err),
            "save a TorchScript module (torch.jit.script + torch.jit.save) "
            f"whose forward takes uint8 [1,3,H,W] and returns float32 [1, {EMBEDDING_DIMS}]",
        )
    mapped = (
        " (saved for cuda; no GPU here, so loaded with map_location='cpu'; the scorer loads it on its GPU)"
        if run.targets_cuda and not run.ours.cuda
        else ""
    )
    return report.add("load", True, f"torch.jit.load as the host does{mapped}")


def check_fence(run: _Run, report: VerifyReport) -> bool:
    """What kept the model in: information, whatever this platform allows."""
    fence = run.ours.fence
    report.add_info(
        "fence",
        f"the model ran in a child process: files: {fence.get('files', 'unknown')}; memory: "
        f"{fence.get('memory', 'unknown')}; what it prints discarded; killed after {run.limits.call_timeout:g} s "
        "per call and when verify ends",
    )
    return True


def check_calls(run: _Run, report: VerifyReport) -> bool:
    """One check per host input: what the call raised, or its output's shape, dtype, norm and repeatability."""
    ours = run.ours
    fix = "the forward must accept uint8 [1,3,H,W] of any size"
    if run.half:
        fix += "; a float16 artifact needs float16 kernels: verify it on a GPU machine (the scorer runs it on its GPU)"
    for name in run.inputs:
        if name in ours.errors:
            error = ours.errors[name]
            if "can't allocate memory" in error:
                error += f" (verify's cap: {ours.fence.get('memory', '')})"
            report.add(f"call {name}", False, f"model({tuple(run.inputs[name].shape)}) raised {error}", fix)
        elif name in ours.outputs:
            _check_output(report, name, ours.outputs[name], ours.again[name], on_gpu=ours.cuda)
    return True


def check_distinct(run: _Run, report: VerifyReport) -> bool:
    """Different images give different embeddings: a constant model meets the contract and scores ~0."""
    embeddings = [
        out.double().flatten()
        for name, out in run.ours.outputs.items()
        if name not in run.ours.errors and out.is_floating_point() and bool(torch.isfinite(out).all())
    ]
    if len(embeddings) < 2 or len({e.numel() for e in embeddings}) > 1:
        return True  # nothing to compare, or different shapes: the call checks say what is wrong
    spread = max(float((e - embeddings[0]).abs().max()) for e in embeddings)
    if spread > DISTINCT_MIN_DIFFERENCE:
        detail = f"{len(embeddings)} different host inputs give different embeddings (max |difference| {spread:.2e})"
    else:
        detail = (
            f"all {len(embeddings)} host inputs (different sizes, noise, grayscale, CMYK) give the same embedding "
            f"(max |difference| {spread:.1e} <= {DISTINCT_MIN_DIFFERENCE}): the model ignores its image; it meets "
            "the contract but would score about 0"
        )
    report.add(
        "distinct outputs",
        spread > DISTINCT_MIN_DIFFERENCE,
        detail,
        "embed the input image: check that forward uses x (not a constant or a cached tensor)",
        values={"max_abs_difference": spread},
    )
    return True


def check_parity(run: _Run, report: VerifyReport) -> bool:
    if run.reference is not None:
        on_gpu = run.targets_cuda and run.ours.cuda
        converted = "float16 artifact" if run.half else "artifact run on CUDA" if on_gpu else ""
        _check_parity(report, run.reference, run.inputs, run.ours.outputs, converted)
    return True


def check_runtime(run: _Run, report: VerifyReport) -> bool:
    if run.runtime is not None:
        _check_runtime(report, run, Path(run.runtime))
    return True


def check_budget(run: _Run, report: VerifyReport) -> bool:
    """The scorer's time estimated from the artifact's compute: information, like the measured time."""
    ours = run.ours
    if ours.flops_per_call is None:
        why = ours.errors.get("flop count", "not counted")
        report.add_info("scorer budget", f"not estimated: {why}", skipped=True)
        return True
    budget = budget_for(ours.flops_per_call)
    report.add_info("scorer budget", budget.describe(), values=budget.as_dict())
    return True


def check_timing(run: _Run, report: VerifyReport) -> bool:
    ours = run.ours
    if not run.estimate_time:
        return True
    if "timing call" in ours.errors:
        report.add_info(
            "scorer time",
            f"not measured: the timing call raised {ours.errors['timing call']}",
            skipped=True,
        )
    else:
        check_scorer_time(report, ours.seconds_per_image, ours.where, run.targets_cuda, run.half)
    return True


# In order; a check returning False ends the run (nothing after it can be checked).
CHECKS: tuple[Callable[[_Run, VerifyReport], bool], ...] = (
    check_zip,
    check_archive,
    check_load,
    check_fence,
    check_calls,
    check_distinct,
    check_parity,
    check_runtime,
    check_budget,
    check_timing,
)


@fixed_numerics
def verify_submission(
    zip_path: Path,
    target_torch: str = TARGET_TORCH,
    *,
    runtime: Path | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    estimate_time: bool = True,
    limits: VerifyLimits | None = None,
) -> VerifyReport:
    """Every check the host's scoring run would fail, plus the optional runtime/parity checks (CHECKS).

    The model is loaded and called in a fenced child process (this interpreter), each step killed past
    `limits` (`VerifyLimits`). `runtime`: another Python (e.g. a torch 1.11 venv) that must load and run
    the model with the same outputs. `reference`: the eager pipeline (`guie.stages.export.build_eager`)
    the zip must equal. Raises GuieError for an unknown `target_torch`,
    VerifyInterrupted on SIGTERM/SIGINT (after killing the child and removing the temp files)."""
    _check_target(target_torch)
    report = VerifyReport(str(zip_path))
    with stop_on_signals(), tempfile.TemporaryDirectory(prefix="guie-verify-") as tmp:
        run = _Run(
            zip_path=Path(zip_path),
            tmp=Path(tmp),
            target_torch=target_torch,
            runtime=runtime,
            reference=reference,
            estimate_time=estimate_time,
            limits=limits or VerifyLimits(),
        )
        for check in CHECKS:
            if not check(run, report):
                break
    return report


def write_report(report: VerifyReport, path: Path) -> str:
    """Write the report's JSON to `path` (atomically: metrics/verify.json is a dvc output); the JSON."""
    payload = report.to_json()
    write_text(path, payload)
    return payload
