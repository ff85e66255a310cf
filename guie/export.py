"""The `export` stage: one TorchScript module, uint8 [B,3,H,W] of any size -> [B,64] float32,
L2-normalised, with the eval preprocessing inside; zipped as Kaggle expects.

The tower is re-expressed with legacy-safe ops (erf GELU, matmul attention) so torch 1.11, the
scorer's version, can read the archive; equivalence to the eager model is checked on every export.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch

from guie.atomic import write_bytes, write_text
from guie.config import Params
from guie.errors import GuieError, require_inputs
from guie.model.embedder import Embedder
from guie.model.legacy_vit import LegacyVisionTower
from guie.pca import load_projection
from guie.torchscript_archive import archive_version, strip_debug_info
from guie.train import load_trained_embedder

MODEL_MEMBER = "saved_model.pt"
PARITY_TOLERANCE = 1e-5
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: same params + data => same bytes


def build_models(params: Params, checkpoint: Path, weights: Path, pca: Path) -> tuple[Embedder, torch.jit.ScriptModule]:
    """The eager reference pipeline and its scripted, legacy-safe twin (sharing weights)."""
    trained = load_trained_embedder(params, checkpoint, weights)
    projection = load_projection(pca)
    eager = Embedder(trained.preprocess, trained.tower, trained.head, projection).eval()
    legacy = Embedder(trained.preprocess, LegacyVisionTower(trained.tower), trained.head, projection).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return eager, torch.jit.script(legacy)


@torch.no_grad()
def parity_error(eager: torch.nn.Module, scripted: torch.nn.Module, seed: int) -> float:
    """Max |eager - scripted| over random uint8 images of odd sizes."""
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in [(224, 224), (37, 300), (512, 129), (1, 1)]:
        x = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
        worst = max(worst, float((eager(x) - scripted(x)).abs().max()))
    return worst


def scripted_bytes(module: torch.jit.ScriptModule) -> bytes:
    """Archive bytes that depend only on the module: saved through memory (the inner folder is
    named after the target file) and without debug records (they hold absolute source paths,
    and torch 1.11 aborts the process on 2.x debug records when reporting any load error)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated": the scorer reads TorchScript only
        torch.jit.save(module, buf)
    return strip_debug_info(buf.getvalue())


def zip_model(model_bytes: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo(MODEL_MEMBER, date_time=_ZIP_EPOCH)
        info.external_attr = 0o644 << 16
        info.create_system = 3  # unix, whatever the exporting OS
        zf.writestr(info, model_bytes)
    return buf.getvalue()


def export_submission(params: Params, checkpoint: Path, weights: Path, pca: Path, out_zip: Path, out_json: Path) -> dict:
    require_inputs("export", (checkpoint, "train_finetune"), (pca, "pca"))
    if params.export.device != "cpu":
        raise GuieError("export.device: only 'cpu' artifacts are built so far; set export.device: cpu")
    eager, scripted = build_models(params, checkpoint, weights, pca)
    err = parity_error(eager, scripted, params.seed)
    if not err <= PARITY_TOLERANCE:
        raise GuieError(f"export: scripted model differs from the eager pipeline by {err:.2e} (> {PARITY_TOLERANCE}); this is a bug in guie")
    model_bytes = scripted_bytes(scripted)
    archive = zip_model(model_bytes)
    write_bytes(out_zip, archive)
    info = {
        "file": out_zip.name,
        "sha256": hashlib.sha256(archive).hexdigest(),
        "size": len(archive),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "archive_format_version": archive_version(model_bytes),
        "embedding_dims": params.pca.dims,
        "image_size": params.preprocess.image_size,
        "resize": params.preprocess.resize,
        "device": params.export.device,
        "parity_max_abs_error": err,
        "torch": torch.__version__.split("+")[0],
        "open_clip": open_clip.__version__,
        "params_hash": params.section_hash("seed", "data", "preprocess", "model", "loss", "train", "pca", "export"),
    }
    write_text(out_json, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
