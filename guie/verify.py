"""`guie verify`: prove a submission.zip meets the host's contract before it costs a day on Kaggle.

Each check says what is wrong and how to fix it. The model is called exactly as the scorer calls
it: one RGB uint8 image [1,3,H,W] at its original size, output flattened from `out[0]`.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from guie.torchscript_archive import archive_version, legacy_problems

MODEL_MEMBER = "saved_model.pt"
EMBEDDING_DIMS = 64
NORM_TOLERANCE = 1e-4
MAX_ARCHIVE_VERSION = {"1.11": 9}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


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

    def add(self, name: str, passed: bool, detail: str, fix: str = "") -> bool:
        self.checks.append(Check(name, passed, detail, "" if passed else fix))
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


def _check_output(report: VerifyReport, model: torch.jit.ScriptModule, name: str, x: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            out = model(x)
            again = model(x)
    except Exception as err:  # whatever the model raises, the host would raise too
        report.add(f"call {name}", False, f"model({tuple(x.shape)}) raised {type(err).__name__}: {str(err)[:300]}", "the forward must accept uint8 [1,3,H,W] of any size")
        return
    if not isinstance(out, torch.Tensor):
        report.add(f"call {name}", False, f"output is {type(out).__name__}, not a tensor", "return a [1,64] float32 tensor")
        return
    if out.dim() != 2 or out.shape[0] != 1:
        report.add(f"call {name}", False, f"output shape {list(out.shape)}; the host flattens out[0], so it must be [1, {EMBEDDING_DIMS}]", "keep the batch dimension in forward's output")
        return
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


def verify_submission(zip_path: Path, target_torch: str = "1.11") -> VerifyReport:
    zip_path = Path(zip_path)
    report = VerifyReport(str(zip_path))
    if not zip_path.is_file():
        report.add("zip", False, f"{zip_path} does not exist", "run `dvc repro export` (or `guie export`)")
        return report
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            model_bytes = zf.read(MODEL_MEMBER) if MODEL_MEMBER in names else b""
    except zipfile.BadZipFile as err:
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
    try:
        version = archive_version(model_bytes)
        problems = legacy_problems(model_bytes, target_torch)
        report.add(f"readable by torch {target_torch}", not problems, "; ".join(problems) or f"archive format version {version}, no ops unknown to {target_torch}", "export with guie's legacy-safe modules (erf GELU, matmul attention, direct bicubic resize)")
    except Exception as err:
        report.add(f"readable by torch {target_torch}", False, f"cannot read the TorchScript archive ({type(err).__name__}: {err})", "export with torch.jit.save")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": the host uses it
            model = torch.jit.load(io.BytesIO(model_bytes), map_location="cpu")
        model.eval()
    except Exception as err:
        report.add("load", False, f"torch.jit.load failed: {type(err).__name__}: {str(err)[:300]}", "save a TorchScript module (torch.jit.script + torch.jit.save), not a state dict or pickle")
        return report
    report.add("load", True, "torch.jit.load on CPU")
    for name, x in host_inputs().items():
        _check_output(report, model, name, x)
    return report
