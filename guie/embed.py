"""Embedding many images: batched (each image decoded and resized alone in loader workers, exactly
as the artifact resizes it, then tower, head and projection in batches on the stage's device), or
one by one the way the host calls the exported model. Both stream with bounded memory and show
progress. `evaluate` runs an artifact both ways and holds them to the export's parity promise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from guie.contract import CONVERTED_MIN_COSINE, PARITY_TOLERANCE, host_call, host_decode
from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalTransform
from guie.errors import GuieError
from guie.progress import progress_bar

CPU = torch.device("cpu")


class BatchEmbedder(Protocol):
    """What `embed_rows` needs: an `Embedder`, or the scripted one inside an exported artifact."""

    preprocess: nn.Module  # uint8 [1,3,H,W] at the image's own size -> float [1,3,S,S]; run per image
    training: bool

    def embed_preprocessed(self, x: torch.Tensor) -> torch.Tensor: ...  # float [B,3,S,S] -> [B, D]


@dataclass(frozen=True, kw_only=True)
class Batching:
    """How `embed_rows` runs: `batch_size` images a batch on `device`, decoded by `num_workers`
    loader workers, with `description` on the progress bar."""

    batch_size: int
    num_workers: int = 0
    device: torch.device = CPU
    description: str = "embedding"


@dataclass(frozen=True)
class HostSample:
    """The seeded sample of `size` rows an artifact is also called on the host's way."""

    size: int
    seed: int


@torch.no_grad()
def embed_rows(
    embedder: BatchEmbedder, rows: Sequence[ManifestRow], project_root: Path, batching: Batching
) -> np.ndarray:
    """Batched on `batching.device` (the embedder moves there): [N, D] float32 in row order (projected if the
    embedder has a projection). Each image is resized alone by the embedder's own preprocessing (on
    a CPU copy, in the loader's workers), as one call of the artifact resizes it; only then batched."""
    dataset = ManifestDataset(rows, project_root, EvalTransform(embedder.preprocess))
    device = batching.device
    was_training = embedder.training
    embedder.eval().to(device)
    # own generator: embedding must not move the global RNG
    loader = DataLoader(
        dataset,
        batch_size=batching.batch_size,
        num_workers=batching.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
    chunks = []
    with progress_bar(batching.description, len(dataset)) as advance:
        for images, _ in loader:
            chunks.append(embedder.embed_preprocessed(images.to(device, non_blocking=True)).float().cpu())
            advance(len(images))
    embedder.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


@torch.no_grad()
def embed_like_host(
    model: torch.nn.Module, paths: Sequence[Path], description: str = "embedding (host call)"
) -> np.ndarray:
    """One image per call, decoded and flattened exactly as Kaggle's scorer does."""
    out = []
    with progress_bar(description, len(paths)) as advance:
        for path in paths:
            out.append(host_call(model, host_decode(path)).numpy())
            advance(1)
    return np.stack(out).astype(np.float32)


def artifact_embedder(model: torch.jit.ScriptModule, source: Path) -> BatchEmbedder:
    """The scripted `Embedder` inside an exported artifact (export wraps it as `OnWeightsDevice`):
    its own preprocessing and weights, to embed with in batches."""
    embedder = getattr(model, "embedder", None)
    if embedder is None or not all(hasattr(embedder, part) for part in ("preprocess", "embed_preprocessed")):
        raise GuieError(
            f"{source}: not an artifact guie exported (no embedder.preprocess / embedder.embed_preprocessed "
            "inside), so evaluate cannot embed with it in batches; produce it with `guie export` (dvc repro export)"
        )
    return embedder


def exact_arithmetic(model: nn.Module, device: torch.device) -> bool:
    """Whether batched embedding on `device` does the host call's float32 CPU arithmetic (then the two
    agree within PARITY_TOLERANCE); a GPU or a float16 tower rounds differently (CONVERTED_MIN_COSINE)."""
    tensors = [*model.parameters(), *model.buffers()]
    return device.type == "cpu" and all(t.device.type == "cpu" and t.dtype != torch.float16 for t in tensors)


@dataclass(frozen=True)
class Agreement:
    """How an artifact's batched embeddings compare with its host calls on the same images."""

    images: int
    max_abs_error: float
    min_cosine: float
    worst_error: int  # the position (in the compared rows) of the image with the largest difference
    worst_cosine: int  # ... and of the one with the smallest cosine

    def holds(self, exact: bool) -> bool:
        return self.max_abs_error <= PARITY_TOLERANCE if exact else self.min_cosine >= CONVERTED_MIN_COSINE

    def worst(self, exact: bool) -> int:
        """The position of the image that `holds(exact)` judges worst."""
        return self.worst_error if exact else self.worst_cosine


def agreement(host: np.ndarray, batched: np.ndarray) -> Agreement:
    """`host` and `batched`: [N, D] embeddings of the same N images, in the same order."""
    if host.shape != batched.shape:
        return Agreement(len(host), float("inf"), -1.0, 0, 0)
    h, b = host.astype(np.float64), batched.astype(np.float64)
    errors = np.abs(h - b).max(axis=1)
    norms = np.linalg.norm(h, axis=1) * np.linalg.norm(b, axis=1)
    # identical rows agree fully, zero vectors included
    cosines = np.where(errors == 0, 1.0, (h * b).sum(axis=1) / np.maximum(norms, 1e-12))
    # NaN anywhere counts as the worst disagreement
    errors, cosines = np.nan_to_num(errors, nan=np.inf), np.nan_to_num(cosines, nan=-1.0)
    return Agreement(len(h), float(errors.max()), float(cosines.min()), int(errors.argmax()), int(cosines.argmin()))


def sample_positions(n: int, size: int, seed: int) -> list[int]:
    """A fixed, seeded sample of `size` of positions 0..n-1 (all when size >= n), in increasing order."""
    if size >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size, replace=False).tolist())


def embed_artifact(
    model: torch.jit.ScriptModule,
    source: Path,
    rows: Sequence[ManifestRow],
    project_root: Path,
    batching: Batching,
    sample: HostSample,
) -> tuple[np.ndarray, Agreement]:
    """The artifact `model` (loaded from `source` as the host loads it) over `rows`, batched as
    `batching` says; and, on the seeded `sample` of rows, called the host's way (one image per call, as
    loaded), which the batched embeddings must equal within the export's parity promise, or GuieError."""
    embedder = artifact_embedder(model, source)
    exact = exact_arithmetic(model, batching.device)
    picked = sample_positions(len(rows), sample.size, sample.seed)
    # the host's way first, with the artifact where the host's loading put it
    description = batching.description
    host = embed_like_host(model, [project_root / rows[i].path for i in picked], f"{description}: host calls (sample)")
    batched = embed_rows(embedder, rows, project_root, replace(batching, description=f"{description}: batched"))
    check = agreement(host, batched[picked])
    if not check.holds(exact):
        bound = (
            f"max |difference| {check.max_abs_error:.2e} > {PARITY_TOLERANCE}"
            if exact
            else f"cosine {check.min_cosine:.6f} < {CONVERTED_MIN_COSINE}"
        )
        raise GuieError(
            f"{source}: the artifact called the host's way (one image per call) and its own batched embedding "
            f"disagree on {rows[picked[check.worst(exact)]].path} ({bound}, the export's parity promise; "
            f"{check.images} images compared): its forward is not its preprocessing then its embedding; "
            "re-export it with `guie export` (dvc repro export)"
        )
    return batched, check
