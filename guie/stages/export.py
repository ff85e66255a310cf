"""The `export` stage: one TorchScript module, uint8 [B,3,H,W] of any size -> [B,64] float32,
L2-normalised, with the eval preprocessing inside; zipped as Kaggle expects.

The tower is re-expressed with legacy-safe ops (erf GELU, matmul attention) so torch 1.11, the
scorer's version, can read the archive; equivalence to the eager model is checked on every export.
`export.device: cuda` stores the weights on the GPU (the host loads without a map location and
never moves its images: `forward` does) and `export.half` runs the tower in float16; both are
converted on a copy after the float32 CPU parity proof and then held to a cosine with it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import open_clip
import torch
from torch import nn

from guie.atomic import atomic_path, require_free, writable_dir, write_text
from guie.contract import CONVERTED_MIN_COSINE, MODEL_MEMBER, PARITY_TOLERANCE, TARGET_TORCH
from guie.errors import GuieError, require_inputs
from guie.model.checkpoint import load_trained, load_trained_embedder
from guie.model.deploy import HalfPrecision, OnWeightsDevice
from guie.model.embedder import Embedder
from guie.model.legacy import legacy_tower
from guie.model.projection import load_projection
from guie.params.fingerprint import artifact_hash
from guie.scorer_budget import budget_for, count_flops
from guie.threads import fixed_numerics
from guie.torchscript_archive import LEGACY_MAX_ARCHIVE_BYTES, archive_version, legacy_problems, rewrite_archive

if TYPE_CHECKING:
    from guie.params.load import Params

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: same params + data => same bytes
_ARCHIVE_SLACK = 16 << 20  # an archive's code, constants and zip records beyond its weights: a few MB at most


def build_eager(params: Params, checkpoint: Path, weights: Path, pca: Path) -> Embedder:
    """The eager reference pipeline: trained tower + head, PCA, the eval preprocessing (stepped
    downscaling on for CUDA exports, exactly as the artifact does it)."""
    return _eager(params, load_trained_embedder(params, checkpoint, weights), pca)


def _eager(params: Params, trained: Embedder, pca: Path) -> Embedder:
    """`build_eager` from the trained embedder."""
    trained.preprocess.stepped_downscale = params.export.device == "cuda"
    projection = load_projection(pca)
    return Embedder(trained.preprocess, trained.tower, trained.head, projection, flip_tta=params.export.flip_tta).eval()


def legacy_twin(eager: Embedder) -> Embedder:
    """`eager` with its tower rewritten in torch-1.11-safe ops, sharing every weight."""
    return Embedder(
        eager.preprocess, legacy_tower(eager.tower), eager.head, eager.projection, flip_tta=eager.flip_tta
    ).eval()


def deployable(legacy: Embedder, device: str, half: bool) -> nn.Module:
    """What the artifact holds: `legacy` on `device` (tower in float16 when `half`), taking the
    host's images wherever they are. Converted on a copy, so the shared eager weights stay float32."""
    if device != "cpu" or half:
        legacy = copy.deepcopy(legacy)
    if half:
        legacy.tower = HalfPrecision(legacy.tower)
    return OnWeightsDevice(legacy).to(device).eval()


def script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", FutureWarning
        )  # "torch.jit.script is deprecated": the scorer reads TorchScript only
        return torch.jit.script(module)


def build_models(params: Params, checkpoint: Path, weights: Path, pca: Path) -> tuple[Embedder, torch.jit.ScriptModule]:
    """The eager reference pipeline and its scripted, legacy-safe float32 CPU twin (sharing weights)."""
    eager = build_eager(params, checkpoint, weights, pca)
    return eager, script(legacy_twin(eager))


# host-like odd sizes, batches of 2; 37x2000 exercises stepped downscaling in CUDA exports
_PARITY_SIZES = [(224, 224), (37, 300), (512, 129), (1, 1), (37, 2000)]


def _parity_images(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8) for h, w in _PARITY_SIZES]


@torch.no_grad()
def parity_error(eager: nn.Module, scripted: nn.Module, seed: int) -> float:
    """Max |eager - scripted| over random uint8 images of odd sizes (outputs compared on the CPU)."""
    return max(float((eager(x) - scripted(x).cpu()).abs().max()) for x in _parity_images(seed))


@torch.no_grad()
def min_cosine(eager: nn.Module, scripted: nn.Module, seed: int) -> float:
    """Smallest cosine between eager and scripted embeddings over the parity images."""
    return min(
        float(torch.nn.functional.cosine_similarity(eager(x), scripted(x).cpu().float()).min())
        for x in _parity_images(seed)
    )


_TEMP_PREFIX = ".guie-export-"  # + the exporting process's pid: a folder whose process is gone is stale


def _temp_prefix() -> str:
    return f"{_TEMP_PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_exports(folder: Path) -> list[Path]:
    """Delete the temporary folders a killed export left in `folder` (their process is gone; a
    ViT-H's are GBs); an export running beside this one keeps its own. Returns what was deleted."""
    stale = []
    for entry in sorted(folder.glob(_TEMP_PREFIX + "*")):
        pid = entry.name.removeprefix(_TEMP_PREFIX).split("-")[0]
        if entry.is_dir() and not entry.is_symlink() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(entry, ignore_errors=True)
            stale.append(entry)
    return stale


def save_archive(module: torch.jit.ScriptModule, path: Path) -> None:
    """The TorchScript archive at `path`, with bytes that depend only on the module and a container
    torch 1.11 reads: saved to disk, then rewritten record by record through torch's own writer
    without debug records (they hold absolute source paths, and torch 1.11 aborts the process on
    2.x debug records when reporting any load error). Peak memory: the module plus one record."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=_temp_prefix(), dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.pt"
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # "torch.jit.save is deprecated": the scorer reads TorchScript only
            torch.jit.save(module, str(raw))
        rewrite_archive(raw, path)


def scripted_bytes(module: torch.jit.ScriptModule) -> bytes:
    """`save_archive` into memory, for small modules (tests, benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="guie-export-") as tmp:
        path = Path(tmp) / MODEL_MEMBER
        save_archive(module, path)
        return path.read_bytes()


def _zip_member(src: BinaryIO, size: int, dst: BinaryIO) -> None:
    """Write the one-member submission zip: `src` (size bytes) as MODEL_MEMBER, stored, fixed metadata.
    Past 2 GiB the zip needs zip64 records; Kaggle's unzip reads them (only torch 1.11 does not)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(MODEL_MEMBER, date_time=_ZIP_EPOCH)
        info.external_attr = 0o644 << 16
        info.create_system = 3  # unix, whatever the exporting OS
        info.file_size = size
        with zf.open(info, "w", force_zip64=size > zipfile.ZIP64_LIMIT) as out:
            shutil.copyfileobj(src, out, 1 << 20)


def zip_model(model_bytes: bytes) -> bytes:
    buf = io.BytesIO()
    _zip_member(io.BytesIO(model_bytes), len(model_bytes), buf)
    return buf.getvalue()


def write_zip(model_path: Path, out_zip: Path) -> None:
    """The submission zip around the archive at `model_path`, streamed and written atomically."""
    with atomic_path(out_zip) as tmp, open(model_path, "rb") as src, open(tmp, "wb") as dst:
        _zip_member(src, Path(model_path).stat().st_size, dst)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def scripted_classes(module: torch.jit.ScriptModule) -> list[str]:
    """The Python classes whose compiled code the archive holds, by qualified name: moving or renaming
    one changes the archive's bytes, so export.json records them next to its sha256."""
    # a class scripted twice in one process gets a "___torch_mangle_N." segment; the name is what it was before
    names = (m._c._type().qualified_name().removeprefix("__torch__.") for m in module.modules())
    return sorted({re.sub(r"___torch_mangle_\d+\.", "", name) for name in names})


def write_artifact(artifact: torch.jit.ScriptModule, out_zip: Path) -> dict:
    """Save `artifact` as the submission zip (refusing an archive torch 1.11 would not load); what it wrote."""
    with tempfile.TemporaryDirectory(prefix=_temp_prefix(), dir=out_zip.parent) as tmp:
        model_path = Path(tmp) / MODEL_MEMBER
        save_archive(artifact, model_path)
        problems = legacy_problems(model_path, TARGET_TORCH)
        if problems:
            raise GuieError(
                "export: torch " + TARGET_TORCH + " (the scorer) could not load the archive: " + "; ".join(problems)
            )
        write_zip(model_path, out_zip)
        return {
            "file": out_zip.name,
            "sha256": _sha256(out_zip),
            "size": out_zip.stat().st_size,
            "model_sha256": _sha256(model_path),
            "model_size": model_path.stat().st_size,
            "archive_format_version": archive_version(model_path),
            "scripted_classes": scripted_classes(artifact),
            "target_torch": TARGET_TORCH,
        }


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _check_size(module: nn.Module, half: bool) -> None:
    """Refuse, before scripting, a model whose weights alone exceed what torch 1.11 reads."""
    nbytes = _weight_bytes(module)
    if nbytes > LEGACY_MAX_ARCHIVE_BYTES:
        fix = "use a smaller model" if half else "set export.half: true (float16 tower, half the size)"
        raise GuieError(
            f"export: the model's weights take {nbytes / 2**30:.2f} GiB; torch 1.11 (the scorer) reads TorchScript "
            f"archives up to 4 GiB; {fix}"
        )


def _check_device(params: Params) -> None:
    if params.export.half and params.export.device == "cpu":
        raise GuieError(
            "export.half: true needs export.device: cuda; torch 1.11 (the scorer) has no float16 CPU kernels "
            "(conv2d fails), so set export.device: cuda or export.half: false"
        )
    if params.export.device == "cuda" and not torch.cuda.is_available():
        raise GuieError(
            "export.device: cuda needs a GPU on the exporting machine (torch.cuda.is_available() is False); "
            "export on a GPU machine, or set export.device: cpu for a small model"
        )


@fixed_numerics
def export_submission(
    params: Params, checkpoint: Path, weights: Path, pca: Path, out_zip: Path, out_json: Path
) -> dict:
    require_inputs("export", (checkpoint, f"train@{checkpoint.stem}"), (pca, "pca"))
    for folder in dict.fromkeys((out_zip.parent, out_json.parent)):
        writable_dir(folder, "export")  # before the minutes of loading and scripting
    for stale in remove_stale_exports(out_zip.parent):
        print(f"export: deleted {stale}, left by an export that was killed", file=sys.stderr)
    _check_device(params)
    device, half = params.export.device, params.export.half
    trained, definition = load_trained(params, checkpoint, weights)
    eager = _eager(params, trained, pca)
    legacy = legacy_twin(eager)
    deployed = deployable(legacy, device, half)
    _check_size(deployed, half)
    # torch's archive writer aborts the process (a C++ error in a destructor) when the disk fills
    # under it, so the room is checked first: the raw archive and its rewrite, then the rewrite and
    # the zip, exist at once
    require_free(out_zip.parent, 2 * _weight_bytes(deployed) + _ARCHIVE_SLACK, "export")
    artifact = script(deployed)
    converted = device != "cpu" or half
    # the legacy rewrite is proven in float32 on the CPU; a converted artifact is then held to a cosine
    err = parity_error(eager, script(legacy) if converted else artifact, params.seed)
    if not err <= PARITY_TOLERANCE:
        raise GuieError(
            f"export: scripted model differs from the eager pipeline by {err:.2e} (> {PARITY_TOLERANCE}); "
            "this is a bug in guie"
        )
    cosine = min_cosine(eager, artifact, params.seed) if converted else None
    if cosine is not None and not cosine >= CONVERTED_MIN_COSINE:
        raise GuieError(
            f"export: the {device}{' float16' if half else ''} artifact's embeddings have cosine {cosine:.5f} "
            "with the float32 "
            f"pipeline (< {CONVERTED_MIN_COSINE}); set export.half: false"
        )
    info = write_artifact(artifact, out_zip) | {
        "model": params.model.name,
        "embedding_dims": params.pca.dims,
        # the final training stage's geometry (it may differ from preprocess.image_size)
        "image_size": definition.image_size,
        "resize": definition.resize,
        "patch_stride": definition.patch_stride,
        "device": device,
        "half": half,
        "tta": params.export.tta,
        "parity_max_abs_error": err,
        "torch": torch.__version__.split("+")[0],
        "open_clip": open_clip.__version__,
        "params_hash": artifact_hash(params),
        "scorer_budget": budget_for(count_flops(artifact)).as_dict(),
    }
    if cosine is not None:
        info["deployed_min_cosine"] = cosine
    write_text(out_json, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
