"""Embedding many images: batched through the eager model, or one by one the way the host calls
the exported model. Both stream with bounded memory and show progress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from guie.contract import host_call, host_decode
from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalTransform
from guie.model.embedder import Embedder
from guie.progress import progress_bar

CPU = torch.device("cpu")


@torch.no_grad()
def embed_rows(
    embedder: Embedder,
    rows: Sequence[ManifestRow],
    project_root: Path,
    batch_size: int,
    description: str = "embedding",
    num_workers: int = 0,
    device: torch.device = CPU,
) -> np.ndarray:
    """Eager, batched, in float32 on `device` (the embedder moves there): [N, D] float32 in row order
    (projected if the embedder has a projection)."""
    dataset = ManifestDataset(rows, project_root, EvalTransform(embedder.preprocess))
    was_training = embedder.training
    embedder.eval().to(device)
    # own generator: embedding must not move the global RNG
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
    )
    chunks = []
    with progress_bar(description, len(dataset)) as advance:
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
