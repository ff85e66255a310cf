"""`guie verify`: prove a submission.zip meets the host's contract before it costs a day on Kaggle.

Each check says what is wrong and how to fix it. The model is called exactly as the scorer calls
it: one RGB uint8 image [1,3,H,W] at its original size, output flattened from `out[0]`.
Optional checks: the same calls in another interpreter (`runtime`, e.g. a torch 1.11 venv) compared
with this torch, parity with the eager pipeline (`reference`), and the scorer's time for 205k images.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
TIMING_SIZE = (512, 512)  # the 130k public set's size; the model's cost does not depend on it beyond the resize
# A hostile zip must not exhaust memory or disk: saved_model.pt is unpacked to a file, streaming,
# and refused above the largest archive torch 1.11 reads or when it inflates like a zip bomb
# (TorchScript weights barely compress: ~1.1x; a bomb of zeros inflates ~1000x).
MAX_MODEL_BYTES = LEGACY_MAX_ARCHIVE_BYTES
MAX_COMPRESSION_RATIO = 50
# The model is loaded and called in a child process killed when one step (the load, or one host
# call) takes longer than this: a forward that never returns cannot be interrupted in-process.
# ViT-H-14 float32 on 2 CPU cores: ~3 s a call, ~20 s to load.
CALL_TIMEOUT_S = 600.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # could not run here (e.g. a CUDA artifact's timing without a GPU); does not fail
    info: bool = False  # information only (a measured time): never fails, whatever it measured
    values: dict[str, float] = field(default_factory=dict)  # measured numbers, for machines


@dataclass
class VerifyReport:
    path: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" + (f" -> {c.fix}" if c.fix else "") for c in self.checks if not c.passed]

    def add(
        self,
        name: str,
        passed: bool,
        detail: str,
        fix: str = "",
        *,
        skipped: bool = False,
        info: bool = False,
        values: dict[str, float] | None = None,
    ) -> bool:
        self.checks.append(Check(name, passed, detail, "" if passed else fix, skipped, info, dict(values or {})))
        return passed

    def to_dict(self) -> dict:
        return {"path": self.path, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


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


# Runs in a child interpreter: this one, or another (`--runtime`, e.g. torch 1.11 on Python 3.10),
# so it uses nothing newer than both have (numpy and PIL not needed). It announces each step on
# stdout before taking it, so the parent can name the step that hangs and kill it. Tensors travel
# as torch.save files, which torch 1.11 reads from torch 2.x and the other way round.
HOST_CALLS_SCRIPT = r"""
import json, re, statistics, sys, time, torch
model_path, inputs_path, outputs_path, timing_calls, count_flops = sys.argv[1:6]
timing_calls = int(timing_calls)

def say(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

def describe(err, at_load):
    # a load (compile) error leads with its cause; a call error is a TorchScript traceback whose
    # last line is the cause ("RuntimeError: ...")
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = (" ".join(lines[:2]) if at_load else (lines[-1] if lines else ""))[:400]
    return text if re.match(r"\w*(Error|Exception): ", text) else "%s: %s" % (type(err).__name__, text)

cuda = torch.cuda.is_available()
say(step="load", torch=torch.__version__, cuda=cuda, threads=torch.get_num_threads(),
    device_name=torch.cuda.get_device_name() if cuda else "")
try:
    # the host loads without a map location; without a GPU here a CUDA artifact is mapped to the CPU
    model = torch.jit.load(model_path, map_location=None if cuda else "cpu")
    model.eval()
except Exception as err:
    say(step="failed", load_error=describe(err, True))
    sys.exit(3)
outputs, errors = {}, {}
with torch.no_grad():
    for name, x in torch.load(inputs_path).items():
        say(step="call " + name)
        try:
            out, again = model(x), model(x)
            if isinstance(out, torch.Tensor) and isinstance(again, torch.Tensor):
                outputs[name], outputs[name + "#again"] = out.detach().cpu(), again.detach().cpu()
            else:
                errors[name] = "output is %s, not a tensor" % type(out).__name__
        except Exception as err:
            errors[name] = describe(err, False)
    seconds = None
    if timing_calls:
        say(step="timing call")
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (1, 3, TIMING_HEIGHT, TIMING_WIDTH), generator=g, dtype=torch.uint8)
        times = []
        try:
            for i in range(2 + timing_calls):  # 2 warm-up calls: the profiling executor optimises the graph first
                start = time.perf_counter()
                torch.flatten(model(x)[0]).cpu()  # the host's call; .cpu() waits for the GPU
                if i >= 2:
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
        except Exception as err:
            errors["timing call"] = describe(err, False)
    flops = None
    if count_flops == "1":  # this interpreter only: the counter is guie's (torch 2.x), one source of truth
        say(step="flop count")
        try:
            from guie.scorer_budget import count_flops as count
            flops = count(model)
        except Exception as err:
            errors["flop count"] = describe(err, False)
torch.save(outputs, outputs_path)
say(step="done", errors=errors, seconds_per_image=seconds, flops=flops)
""".replace("TIMING_HEIGHT", str(TIMING_SIZE[0])).replace("TIMING_WIDTH", str(TIMING_SIZE[1]))


@dataclass
class HostCalls:
    """What a child interpreter reported: its torch, per-input outputs (two calls each) or errors."""

    torch: str
    cuda: bool
    where: str  # the device the calls ran on, in words
    outputs: dict[str, torch.Tensor]  # name -> first call's output
    again: dict[str, torch.Tensor]  # name -> second call's output
    errors: dict[str, str]  # name -> what the call raised
    seconds_per_image: float | None
    flops_per_call: int | None = None  # counted when asked (this interpreter)


class HostCallError(RuntimeError):
    """The child interpreter failed in `step` ("start-up", "load", "call 1x1", "timing call")."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _start_child(python: Path | str, command: list[str], env: dict[str, str] | None) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
    except OSError as err:
        raise HostCallError("start-up", f"cannot run {python}: {err}") from None


def _start_readers(child: subprocess.Popen, lines: queue.Queue, stderr: list[str]) -> list[threading.Thread]:
    """Threads that feed the child's stdout lines into `lines` (then None) and collect its stderr."""
    readers = [threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)]
    readers.append(threading.Thread(target=lambda: stderr.extend(child.stderr), daemon=True))
    for reader in readers:
        reader.start()
    return readers


def _follow_steps(
    lines: queue.Queue, python: Path | str, load_timeout: float, call_timeout: float
) -> tuple[list[dict], str]:
    """The child's messages until its stdout closes, and the last step it announced. Raises
    HostCallError when a step (start-up and the load: `load_timeout`, a call: `call_timeout`) takes longer."""
    messages, step = [], "start-up"
    while True:
        limit = load_timeout if step in ("start-up", "load") else call_timeout
        try:
            line = lines.get(timeout=limit)
        except queue.Empty:
            raise HostCallError(
                step,
                f"{step} did not return within {limit:g} s in {python}; the child was killed "
                "(a forward that never ends? if the model is just slow, raise --call-timeout)",
            ) from None
        if line is None:
            return messages, step
        try:
            messages.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the model printed something
        step = messages[-1].get("step", step)


def _finished(python: Path | str, returncode: int, messages: list[dict], step: str, err_tail: str) -> dict:
    """The child's last message when it ran to the end; HostCallError saying why it did not."""
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        raise HostCallError(
            step,
            f"{python} was killed by {sig} during {step} (torch 1.11 aborts on an archive it cannot read); "
            f"stderr: {err_tail}",
        )
    last = messages[-1] if messages else {}
    if "load_error" in last:
        raise HostCallError(
            "load", f"torch {messages[0].get('torch')} in {python} cannot load the model: {last['load_error']}"
        )
    if returncode != 0 or last.get("step") != "done":
        raise HostCallError(step, f"{python} failed during {step} (exit {returncode}): {err_tail}")
    return last


def run_host_calls(
    python: Path | str,
    model_path: Path,
    inputs: dict[str, torch.Tensor],
    *,
    timing_calls: int = 0,
    count_flops: bool = False,
    call_timeout: float = CALL_TIMEOUT_S,
    load_timeout: float = CALL_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> HostCalls:
    """Load the model and call it on each input (twice) in a child interpreter, as the host does.

    Start-up and the load must finish within `load_timeout` s, each call within `call_timeout` s,
    or the child is killed. Raises HostCallError saying why when the interpreter cannot run, dies (a signal: torch
    1.11 aborts on archives it cannot read), hangs in a step, or cannot load the model."""
    with tempfile.TemporaryDirectory(prefix="guie-verify-") as tmp:
        inputs_path, outputs_path = os.path.join(tmp, "inputs.pt"), os.path.join(tmp, "outputs.pt")
        torch.save(inputs, inputs_path)
        command = [
            str(python),
            "-c",
            HOST_CALLS_SCRIPT,
            str(model_path),
            inputs_path,
            outputs_path,
            str(timing_calls),
            str(int(count_flops)),
        ]
        child = _start_child(python, command, env)
        lines: queue.Queue = queue.Queue()
        stderr: list[str] = []
        readers = _start_readers(child, lines, stderr)
        try:
            messages, step = _follow_steps(lines, python, load_timeout, call_timeout)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)  # the child's whole session: nothing outlives verify
            child.wait()
            for reader in readers:
                reader.join(timeout=5)
        last = _finished(python, child.returncode, messages, step, "".join(stderr).strip()[-500:])
        saved = torch.load(outputs_path, map_location="cpu", weights_only=True)
    first = messages[0]
    where = first["device_name"] if first["cuda"] else f"the CPU ({first['threads']} threads)"
    outputs = {k: v for k, v in saved.items() if not k.endswith("#again")}
    again = {k[: -len("#again")]: v for k, v in saved.items() if k.endswith("#again")}
    return HostCalls(
        first["torch"],
        first["cuda"],
        where,
        outputs,
        again,
        last["errors"],
        last["seconds_per_image"],
        last.get("flops"),
    )


def _other_interpreter_env() -> dict[str, str]:
    # the other interpreter must not import this one's packages
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"PYTHONWARNINGS": "ignore"}


def _check_runtime(
    report: VerifyReport,
    python: Path,
    model_path: Path,
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    half: bool,
    timeout: float,
) -> None:
    name = f"runtime {python}"
    fix = (
        "export with guie's legacy-safe modules and float32 weights; "
        "a float16 artifact runs only on a GPU (run --runtime on a GPU machine)"
    )
    try:
        theirs = run_host_calls(
            python, model_path, inputs, call_timeout=timeout, load_timeout=timeout, env=_other_interpreter_env()
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
        report.add(
            name,
            True,
            "not measured: the artifact targets cuda and this machine has no GPU; "
            "run `guie verify` on a GPU machine to estimate it",
            skipped=True,
            info=True,
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
    report.add(name, True, detail, info=True, values={"seconds_per_image": seconds, "estimated_hours": total / 3600})


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


def _open_submission(report: VerifyReport, zip_path: Path, tmp: Path, max_bytes: int) -> Path | None:
    """The zip's checks; the unpacked model's path when there is one to check further."""
    if zip_path.is_dir():
        report.add(
            "zip",
            False,
            f"{zip_path} is a directory, not a zip",
            f"pass the zip file itself, e.g. {zip_path / 'submission.zip'}",
        )
        return None
    if not zip_path.is_file():
        report.add("zip", False, f"{zip_path} does not exist", "run `dvc repro export` (or `guie export`)")
        return None
    model_path = tmp / MODEL_MEMBER
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            if MODEL_MEMBER in names:
                info = zf.getinfo(MODEL_MEMBER)
                problem = _member_problem(info, max_bytes)
                if problem:
                    report.add("zip", False, problem, f"zip the {MODEL_MEMBER} that `guie export` wrote")
                    return None
                _unpack_model(zf, info, model_path, max_bytes)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as err:
        report.add("zip", False, f"not a valid zip archive ({err})", f"zip a single {MODEL_MEMBER} at the archive root")
        return None
    if names != [MODEL_MEMBER]:
        report.add(
            "zip",
            False,
            f"members {names[:5]}{' ...' if len(names) > 5 else ''}; "
            f"the host expects exactly ['{MODEL_MEMBER}'] at the root",
            f"zip only {MODEL_MEMBER}, with no folder prefix",
        )
        return model_path if MODEL_MEMBER in names else None
    report.add("zip", True, f"exactly {MODEL_MEMBER} at the root")
    return model_path


def _check_archive(report: VerifyReport, model_path: Path, target_torch: str) -> set[tuple[str, str]]:
    """Static checks of the TorchScript archive; the placements of its tensors."""
    name = f"readable by torch {target_torch}"
    try:
        version = archive_version(model_path)
        problems = legacy_problems(model_path, target_torch)
        placements = tensor_placements(model_path)
    except Exception as err:
        report.add(
            name,
            False,
            f"cannot read the TorchScript archive ({type(err).__name__}: {err})",
            "export with torch.jit.save",
        )
        return set()
    report.add(
        name,
        not problems,
        "; ".join(problems) or f"archive format version {version}, a container and no ops unknown to {target_torch}",
        "export with guie's legacy-safe modules (erf GELU, matmul attention, direct bicubic resize)",
    )
    _check_placements(report, placements)
    return placements


def _check_calls(report: VerifyReport, inputs: dict[str, torch.Tensor], ours: HostCalls, half: bool) -> None:
    """One check per host input: what the call raised, or its output's shape, dtype, norm and repeatability."""
    fix = "the forward must accept uint8 [1,3,H,W] of any size"
    if half:
        fix += "; a float16 artifact needs float16 kernels: verify it on a GPU machine (the scorer runs it on its GPU)"
    for name in inputs:
        if name in ours.errors:
            report.add(f"call {name}", False, f"model({tuple(inputs[name].shape)}) raised {ours.errors[name]}", fix)
        elif name in ours.outputs:
            _check_output(report, name, ours.outputs[name], ours.again[name], on_gpu=ours.cuda)


def _check_timing(report: VerifyReport, ours: HostCalls, targets_cuda: bool, half: bool) -> None:
    if "timing call" in ours.errors:
        report.add(
            "scorer time",
            True,
            f"not measured: the timing call raised {ours.errors['timing call']}",
            skipped=True,
            info=True,
        )
    else:
        check_scorer_time(report, ours.seconds_per_image, ours.where, targets_cuda, half)


def _check_budget(report: VerifyReport, ours: HostCalls) -> None:
    """The scorer's time estimated from the artifact's compute: information, like the measured time."""
    if ours.flops_per_call is None:
        why = ours.errors.get("flop count", "not counted")
        report.add("scorer budget", True, f"not estimated: {why}", skipped=True, info=True)
        return
    budget = budget_for(ours.flops_per_call)
    report.add("scorer budget", True, budget.describe(), info=True, values=budget.as_dict())


@fixed_numerics
def verify_submission(
    zip_path: Path,
    target_torch: str = TARGET_TORCH,
    *,
    runtime: Path | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    estimate_time: bool = True,
    runtime_timeout: float = CALL_TIMEOUT_S,
    call_timeout: float = CALL_TIMEOUT_S,
    max_model_bytes: int = MAX_MODEL_BYTES,
) -> VerifyReport:
    """Every check the host's scoring run would fail, plus the optional runtime/parity checks.

    The model is loaded and called in a child process (this interpreter), each step killed after
    `call_timeout` s. `runtime`: another Python (e.g. a torch 1.11 venv) that must load and run the
    model with the same outputs. `reference`: the eager pipeline (`guie.stages.export.build_eager`) the
    zip must equal. Raises GuieError for an unknown `target_torch`."""
    _check_target(target_torch)
    zip_path = Path(zip_path)
    report = VerifyReport(str(zip_path))
    with tempfile.TemporaryDirectory(prefix="guie-verify-") as tmp:
        model_path = _open_submission(report, zip_path, Path(tmp), max_model_bytes)
        if model_path is None:
            return report
        placements = _check_archive(report, model_path, target_torch)
        targets_cuda = any(device.startswith("cuda") for _, device in placements)
        half = any(dtype == "float16" for dtype, _ in placements)
        inputs = host_inputs()
        timing = 5 if estimate_time and (torch.cuda.is_available() or not targets_cuda) else 0
        try:
            ours = run_host_calls(
                sys.executable,
                model_path,
                inputs,
                timing_calls=timing,
                count_flops=True,
                call_timeout=call_timeout,
                load_timeout=max(call_timeout, CALL_TIMEOUT_S),
            )
        except HostCallError as err:
            name = "load" if err.step in ("start-up", "load") else err.step
            report.add(
                name,
                False,
                str(err),
                "save a TorchScript module (torch.jit.script + torch.jit.save) "
                f"whose forward takes uint8 [1,3,H,W] and returns float32 [1, {EMBEDDING_DIMS}]",
            )
            return report
        mapped = (
            " (saved for cuda; no GPU here, so loaded with map_location='cpu'; the scorer loads it on its GPU)"
            if targets_cuda and not ours.cuda
            else ""
        )
        report.add("load", True, f"torch.jit.load as the host does{mapped}")
        _check_calls(report, inputs, ours, half)
        if reference is not None:
            on_gpu = targets_cuda and ours.cuda
            converted = "float16 artifact" if half else "artifact run on CUDA" if on_gpu else ""
            _check_parity(report, reference, inputs, ours.outputs, converted)
        if runtime is not None:
            _check_runtime(report, Path(runtime), model_path, inputs, ours.outputs, half, runtime_timeout)
        _check_budget(report, ours)
        if estimate_time:
            _check_timing(report, ours, targets_cuda, half)
    return report
