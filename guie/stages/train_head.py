"""The `train_head` stage (stage 1): the backbone frozen, the head and sub-center ArcFace trained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from guie.data.manifest import read_manifest
from guie.errors import require_inputs
from guie.runtime import training_runtime
from guie.training.loader import split_rows
from guie.training.loop import finish, fit
from guie.training.model import new_training_model
from guie.training.optimisation import Optimisation, make_optimizer
from guie.training.resume import run_fingerprint
from guie.training.rng import seed_everything
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params


def train_head(
    params: Params,
    project_root: Path,
    manifest: Path,
    weights: Path,
    out: Path,
    metrics_dir: Path,
    checkpoint: Path,
    feature_cache: Path,
    fresh: bool = False,
) -> dict:
    """Stage 1; resumes from `checkpoint` (the CLI's: checkpoints/train_head/last.pt) unless `fresh`.
    With train.head.cached_views, the tower's features are kept at `feature_cache` until the end."""
    require_inputs("train_head", (manifest, "manifest"), (weights, "weights"))
    with training_runtime(params.train) as runtime:
        seed_everything(params.seed, runtime)
        train_rows, heldout = split_rows(read_manifest(manifest))
        model = new_training_model(params, weights, train_rows).to(runtime.device)
        for p in model.embedder.tower.parameters():
            p.requires_grad_(False)
        head_params = list(model.embedder.head.parameters()) + list(model.arcface.parameters())
        optimisation = Optimisation(
            model,
            make_optimizer([{"params": head_params, "lr": params.train.head.lr, "name": "head"}], runtime),
            runtime.grad_scaler(),
        )
        fingerprint = run_fingerprint(params, "train_head", [manifest, weights], runtime)
        spec = RunSpec(
            "train_head",
            params.seed,
            params.train.head.epochs,
            False,
            params.train.head.cached_views,
            checkpoint,
            fingerprint,
            fresh,
            feature_cache,
        )
        summary = fit(params, optimisation, spec, train_rows, heldout, project_root, metrics_dir, runtime)
        finish(runtime, model, "head", out, spec)
    return summary
