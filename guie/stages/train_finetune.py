"""The `train_finetune` stage (stage 2): resblocks from train.finetune.unfreeze_from unfrozen, split
learning rates."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from guie.data.manifest import read_manifest
from guie.errors import GuieError, require_inputs
from guie.model.backbone import unfreeze_from
from guie.runtime import training_runtime
from guie.training.loader import split_rows
from guie.training.loop import finish, fit
from guie.training.model import load_training_model
from guie.training.optimisation import Optimisation, make_optimizer
from guie.training.resume import run_fingerprint
from guie.training.rng import seed_everything
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params


def train_finetune(
    params: Params,
    project_root: Path,
    manifest: Path,
    weights: Path,
    head_checkpoint: Path,
    out: Path,
    metrics_dir: Path,
    checkpoint: Path,
    fresh: bool = False,
) -> dict:
    """Stage 2; resumes from `checkpoint` (the CLI's: checkpoints/train_finetune/last.pt) unless `fresh`."""
    require_inputs("train_finetune", (manifest, "manifest"), (head_checkpoint, "train_head"))
    with training_runtime(params.train) as runtime:
        seed_everything(params.seed + 1, runtime)
        train_rows, heldout = split_rows(read_manifest(manifest))
        model = load_training_model(params, head_checkpoint, weights).to(runtime.device)
        if model.classes != sorted({r.label for r in train_rows}):
            raise GuieError(
                f"{head_checkpoint}: trained on another class list than {manifest}; re-run `dvc repro train_head`"
            )
        ft = params.train.finetune
        backbone_params = unfreeze_from(model.embedder.tower, ft.unfreeze_from)
        head_params = list(model.embedder.head.parameters()) + list(model.arcface.parameters())
        groups = [
            {"params": backbone_params, "lr": ft.lr_backbone, "name": "backbone"},
            {"params": head_params, "lr": ft.lr_head, "name": "head"},
        ]
        optimisation = Optimisation(model, make_optimizer(groups, runtime), runtime.grad_scaler())
        fingerprint = run_fingerprint(params, "train_finetune", [manifest, weights, head_checkpoint], runtime)
        spec = RunSpec(
            "train_finetune", params.seed + 1, ft.epochs, bool(backbone_params), 0, checkpoint, fingerprint, fresh
        )
        summary = fit(params, optimisation, spec, train_rows, heldout, project_root, metrics_dir, runtime)
        finish(runtime, model, "finetune", out, spec)
    return summary
