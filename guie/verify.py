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
import signal
import statistics
import subprocess
import tempfile
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from guie.torchscript_archive import archive_version, legacy_problems, tensor_placements

MODEL_MEMBER = "saved_model.pt"
EMBEDDING_DIMS = 64
NORM_TOLERANCE = 1e-4
MAX_ARCHIVE_VERSION = {"1.11": 9}
PARITY_TOLERANCE = 1e-5  # max |scripted - eager| in float32 on the CPU (checked on export and by --checkpoint)
# float16 towers and CUDA kernels (TF32 convolutions) round differently: those artifacts are held to
# a cosine with the float32 CPU pipeline instead (tiny model in float16: cosine 0.999999, max |diff| 5e-4)
CONVERTED_MIN_COSINE = 0.999
# max |runtime - this torch| per embedding value (unit vectors). torch 1.11's antialiased bicubic
# kernel rounds differently (~1e-4 on a 0..255 scale); measured effect on embeddings: 1.3e-7 (tiny
# ViT), 2.9e-7 (random ViT-B-32). 1e-4 leaves room for deep trained towers and still catches a
# changed op (a different GELU or attention moves values by 1e-3 and more).
RUNTIME_TOLERANCE = 1e-4
SCORER_IMAGES = 205_000  # 5,000 queries + 200,000 index images
SCORER_LIMIT_S = 9 * 3600  # one scoring run may take at most 9 hours
TIMING_SIZE = (512, 512)  # the 130k public set's size; the model's cost does not depend on it beyond the resize


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""
    skipped: bool = False  # could not run here (e.g. a CUDA artifact's timing without a GPU); does not fail
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

    def add(self, name: str, passed: bool, detail: str, fix: str = "", *, skipped: bool = False, values: dict[str, float] | None = None) -> bool:
        self.checks.append(Check(name, passed, detail, "" if passed else fix, skipped, dict(values or {})))
        return passed

    def to_dict(self) -> dict:
        return {"path": self.path, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def _host_decode(data: bytes) -> torch.Tensor:
    return pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)


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
    inputs = {f"{h}x{w}": torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8) for h, w in [(1, 1), (37, 2000), (2000, 37), (512, 512)]}
    inputs["grayscale jpeg"] = _host_decode(_jpeg("L", (300, 200), seed))
    inputs["cmyk jpeg"] = _host_decode(_jpeg("CMYK", (200, 300), seed + 1))
    return inputs


def _cause(err: Exception) -> str:
    """A TorchScript call error is an interpreter traceback whose last line is the cause."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {(lines[-1] if lines else '')[:300]}"


def _check_output(report: VerifyReport, model: torch.jit.ScriptModule, name: str, x: torch.Tensor, half: bool = False) -> torch.Tensor | None:
    """The host's call on `x`; returns the output when it is a tensor."""
    try:
        with torch.no_grad():
            out = model(x)
            again = model(x)
    except Exception as err:  # whatever the model raises, the host would raise too
        fix = "the forward must accept uint8 [1,3,H,W] of any size"
        if half:
            fix += "; a float16 artifact needs float16 kernels: verify it on a GPU machine (the scorer runs it on its GPU)"
        report.add(f"call {name}", False, f"model({tuple(x.shape)}) raised {_cause(err)}", fix)
        return None
    if not isinstance(out, torch.Tensor):
        report.add(f"call {name}", False, f"output is {type(out).__name__}, not a tensor", "return a [1,64] float32 tensor")
        return None
    if out.dim() != 2 or out.shape[0] != 1:
        report.add(f"call {name}", False, f"output shape {list(out.shape)}; the host flattens out[0], so it must be [1, {EMBEDDING_DIMS}]", "keep the batch dimension in forward's output")
        return out.cpu()
    emb = torch.flatten(out[0]).cpu()
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
    if not torch.equal(out, again):
        problems.append("differs between two identical calls")
    report.add(f"call {name}", not problems, "; ".join(problems) or f"[1, {EMBEDDING_DIMS}] float32, unit norm, repeatable", "embed to 64 dims (PCA) and L2-normalise in forward, in eval mode")
    return out.cpu()


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


def _load(report: VerifyReport, model_bytes: bytes, targets_cuda: bool) -> torch.jit.ScriptModule | None:
    # the host loads without a map location; without a GPU here a CUDA artifact is mapped to the CPU
    mapped = targets_cuda and not torch.cuda.is_available()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the host uses it
            model = torch.jit.load(io.BytesIO(model_bytes), map_location="cpu" if mapped else None)
        model.eval()
    except Exception as err:
        report.add("load", False, f"torch.jit.load failed: {type(err).__name__}: {str(err)[:300]}", "save a TorchScript module (torch.jit.script + torch.jit.save), not a state dict or pickle")
        return None
    where = "saved for cuda; no GPU here, so loaded with map_location='cpu' (the scorer loads it on its GPU)" if mapped else "as the host does, without a map location"
    report.add("load", True, f"torch.jit.load {where}")
    return model


@torch.no_grad()
def _check_parity(report: VerifyReport, reference: Callable[[torch.Tensor], torch.Tensor], inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], converted: str) -> None:
    """`converted`: "" for a float32 artifact run on the CPU, else what makes it round differently."""
    if not outputs:
        report.add("parity with eager pipeline", False, "no host call returned a tensor to compare", "fix the failing calls first")
        return
    worst, cosine = 0.0, 1.0
    for name, out in outputs.items():
        expected = reference(inputs[name]).cpu()
        if out.shape != expected.shape:
            report.add("parity with eager pipeline", False, f"{name}: output shape {list(out.shape)}, eager pipeline {list(expected.shape)}", "export from the same checkpoint, PCA and params")
            return
        worst = max(worst, float((out.float() - expected).abs().max()))
        cosine = min(cosine, float(torch.nn.functional.cosine_similarity(out.float(), expected).min()))
    values = {"max_abs_error": worst, "min_cosine": cosine}
    summary = f"max |zip - eager| {worst:.2e}, min cosine {cosine:.6f} over {len(outputs)} host inputs"
    fix = "re-export from this checkpoint, PCA and params (`dvc repro export`); if they match, this is a bug in guie's export"
    if converted:
        report.add("parity with eager pipeline", cosine >= CONVERTED_MIN_COSINE, f"{converted}: {summary} (needs cosine >= {CONVERTED_MIN_COSINE})", fix, values=values)
    else:
        report.add("parity with eager pipeline", worst <= PARITY_TOLERANCE, f"{summary} (needs <= {PARITY_TOLERANCE})", fix, values=values)


# Runs in the other interpreter: any Python with torch (numpy and PIL not needed). Tensors travel as
# torch.save files, which torch 1.11 reads from torch 2.x and the other way round.
RUNTIME_SCRIPT = r"""
import json, re, sys, torch
model_path, inputs_path, outputs_path = sys.argv[1:4]
report = {"torch": torch.__version__, "errors": {}}
map_location = None if torch.cuda.is_available() else "cpu"

def describe(err, at_load):
    # a load (compile) error leads with its cause; a call error is a TorchScript traceback whose
    # last line is the cause ("RuntimeError: ...")
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = (" ".join(lines[:2]) if at_load else (lines[-1] if lines else ""))[:400]
    return text if re.match(r"\w*(Error|Exception): ", text) else "%s: %s" % (type(err).__name__, text)

try:
    model = torch.jit.load(model_path, map_location=map_location)
    model.eval()
except Exception as err:
    report["load_error"] = describe(err, True)
    print(json.dumps(report))
    sys.exit(3)
outputs = {}
with torch.no_grad():
    for name, x in torch.load(inputs_path).items():
        try:
            out = model(x)
            if isinstance(out, torch.Tensor):
                outputs[name] = out.detach().cpu()
            else:
                report["errors"][name] = "output is %s, not a tensor" % type(out).__name__
        except Exception as err:
            report["errors"][name] = describe(err, False)
torch.save(outputs, outputs_path)
print(json.dumps(report))
"""


def run_in_runtime(python: Path, model_bytes: bytes, inputs: dict[str, torch.Tensor], timeout: float = 600) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load and call the model in interpreter `python`; returns (its report, its outputs).

    Raises RuntimeError saying why when the interpreter cannot run, dies (a signal: torch 1.11
    aborts on archives it cannot read) or cannot load the model."""
    with tempfile.TemporaryDirectory(prefix="guie-verify-") as tmp:
        model_path, inputs_path, outputs_path = (os.path.join(tmp, n) for n in (MODEL_MEMBER, "inputs.pt", "outputs.pt"))
        Path(model_path).write_bytes(model_bytes)
        torch.save(inputs, inputs_path)
        # the other interpreter must not import this one's packages
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"PYTHONWARNINGS": "ignore"}
        try:
            done = subprocess.run([str(python), "-c", RUNTIME_SCRIPT, model_path, inputs_path, outputs_path], capture_output=True, text=True, timeout=timeout, env=env)
        except OSError as err:
            raise RuntimeError(f"cannot run {python}: {err}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{python} did not finish within {timeout:.0f} s") from None
        if done.returncode < 0:
            sig = signal.Signals(-done.returncode).name
            raise RuntimeError(f"{python} was killed by {sig} while loading or running the model (torch 1.11 aborts on an archive it cannot read); stderr: {done.stderr.strip()[-300:]}")
        lines = done.stdout.strip().splitlines()
        try:
            report = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            report = {}
        if "load_error" in report:
            raise RuntimeError(f"torch {report['torch']} in {python} cannot load the model: {report['load_error']}")
        if done.returncode != 0 or "torch" not in report:
            raise RuntimeError(f"{python} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        outputs = torch.load(outputs_path, map_location="cpu", weights_only=True)
    return report, outputs


def _check_runtime(report: VerifyReport, python: Path, model_bytes: bytes, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], half: bool, timeout: float) -> None:
    name = f"runtime {python}"
    fix = "export with guie's legacy-safe modules and float32 weights; a float16 artifact runs only on a GPU (run --runtime on a GPU machine)"
    try:
        theirs, their_outputs = run_in_runtime(python, model_bytes, inputs, timeout)
    except RuntimeError as err:
        report.add(name, False, str(err), fix)
        return
    version = theirs["torch"]
    raised: dict[str, list[str]] = {}
    for key, message in theirs["errors"].items():
        raised.setdefault(message, []).append(key)
    errors = [f"torch {version}: {', '.join(keys)} raised {message}" for message, keys in raised.items()]
    worst = 0.0
    for key, ours in outputs.items():
        if key in theirs["errors"]:
            continue
        if key not in their_outputs or their_outputs[key].shape != ours.shape:
            shape = list(their_outputs[key].shape) if key in their_outputs else None
            errors.append(f"{key}: output shape {shape} there, {list(ours.shape)} here")
            continue
        worst = max(worst, float((their_outputs[key].float() - ours.float()).abs().max()))
    tolerance = 1e-2 if half else RUNTIME_TOLERANCE  # float16 kernels differ between versions far more
    if worst > tolerance:
        errors.append(f"outputs differ from torch {torch.__version__} by {worst:.2e} (> {tolerance})")
    detail = "; ".join(errors)[:800] if errors else f"torch {version} loads and runs it; max |{version} - {torch.__version__}| {worst:.2e} over {len(outputs)} host inputs (tolerance {tolerance})"
    report.add(name, not errors, detail, fix, values={"max_abs_error": worst})


def host_latency(model: torch.jit.ScriptModule, cuda: bool, calls: int = 5, warmup: int = 2) -> float:
    """Median seconds per host call (decode excluded) on a TIMING_SIZE image, after warm-up calls
    (TorchScript's profiling executor optimises the graph during the first calls)."""
    x = torch.randint(0, 256, (1, 3, *TIMING_SIZE), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    times = []
    with torch.no_grad():
        for i in range(warmup + calls):
            start = time.perf_counter()
            torch.flatten(model(x)[0]).cpu().numpy()  # the host's call; .cpu() waits for the GPU
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_scorer_time(report: VerifyReport, model: torch.jit.ScriptModule, targets_cuda: bool, half: bool, limit_s: float = SCORER_LIMIT_S) -> None:
    """Extrapolate the measured per-image latency to SCORER_IMAGES and compare with the scorer's limit."""
    name = "scorer time"
    if targets_cuda and not torch.cuda.is_available():
        report.add(name, True, "not measured: the artifact targets cuda and this machine has no GPU; run `guie verify` on a GPU machine to estimate it", skipped=True)
        return
    try:
        seconds = host_latency(model, targets_cuda)
    except Exception as err:
        report.add(name, False, f"timing call raised {_cause(err)}", "the forward must accept uint8 [1,3,H,W] of any size")
        return
    total = seconds * SCORER_IMAGES
    where = torch.cuda.get_device_name() if targets_cuda else f"this machine's CPU ({torch.get_num_threads()} threads)"
    detail = (
        f"{seconds * 1000:.1f} ms per {TIMING_SIZE[0]}x{TIMING_SIZE[1]} image on {where} -> {total / 3600:.2f} h for "
        f"{SCORER_IMAGES:,} images (limit {limit_s / 3600:.0f} h; the host's JPEG decoding comes on top)"
    )
    if targets_cuda:
        fix = "the scorer would time out: " + ("use a smaller model or image size" if half else "set export.half: true, or use a smaller model")
    else:
        fix = "the scorer would time out on its CPU: set export.device: cuda (the scorer has a GPU), export.half: true, or use a smaller model"
    report.add(name, total <= limit_s, detail, fix, values={"seconds_per_image": seconds, "estimated_hours": total / 3600})


def verify_submission(
    zip_path: Path,
    target_torch: str = "1.11",
    *,
    runtime: Path | None = None,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    estimate_time: bool = True,
    runtime_timeout: float = 600,
) -> VerifyReport:
    """Every check the host's scoring run would fail, plus the optional runtime/parity checks.

    `runtime`: another Python (e.g. a torch 1.11 venv) that must load and run the model with the
    same outputs. `reference`: the eager pipeline (`guie.export.build_eager`) the zip must equal."""
    zip_path = Path(zip_path)
    report = VerifyReport(str(zip_path))
    if not zip_path.is_file():
        report.add("zip", False, f"{zip_path} does not exist", "run `dvc repro export` (or `guie export`)")
        return report
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            model_bytes = zf.read(MODEL_MEMBER) if MODEL_MEMBER in names else b""
    except (zipfile.BadZipFile, OSError) as err:
        report.add("zip", False, f"not a valid zip archive ({err})", f"zip a single {MODEL_MEMBER} at the archive root")
        return report
    if names != [MODEL_MEMBER]:
        report.add("zip", False, f"members {names}; the host expects exactly ['{MODEL_MEMBER}'] at the root", f"zip only {MODEL_MEMBER}, with no folder prefix")
        if MODEL_MEMBER not in names:
            return report
    else:
        report.add("zip", True, f"exactly {MODEL_MEMBER} at the root")

    if target_torch not in MAX_ARCHIVE_VERSION:
        raise ValueError(f"--target-torch: unsupported version {target_torch!r} (supported: {sorted(MAX_ARCHIVE_VERSION)})")
    placements: set[tuple[str, str]] = set()
    try:
        version = archive_version(model_bytes)
        problems = legacy_problems(model_bytes, target_torch)
        placements = tensor_placements(model_bytes)
        report.add(f"readable by torch {target_torch}", not problems, "; ".join(problems) or f"archive format version {version}, no ops unknown to {target_torch}", "export with guie's legacy-safe modules (erf GELU, matmul attention, direct bicubic resize)")
    except Exception as err:
        report.add(f"readable by torch {target_torch}", False, f"cannot read the TorchScript archive ({type(err).__name__}: {err})", "export with torch.jit.save")
    else:
        _check_placements(report, placements)
    targets_cuda = any(device.startswith("cuda") for _, device in placements)
    half = any(dtype == "float16" for dtype, _ in placements)

    model = _load(report, model_bytes, targets_cuda)
    if model is None:
        return report
    inputs = host_inputs()
    outputs = {}
    for name, x in inputs.items():
        out = _check_output(report, model, name, x, half)
        if out is not None:
            outputs[name] = out
    if reference is not None:
        on_gpu = targets_cuda and torch.cuda.is_available()
        converted = "float16 artifact" if half else "artifact run on CUDA" if on_gpu else ""
        _check_parity(report, reference, inputs, outputs, converted)
    if runtime is not None:
        _check_runtime(report, Path(runtime), model_bytes, inputs, outputs, half, runtime_timeout)
    if estimate_time:
        check_scorer_time(report, model, targets_cuda, half)
    return report
