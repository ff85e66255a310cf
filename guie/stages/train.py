"""The `train` stage, one DVC stage per entry of train.stages (`train@<name>`): start from the
backbone or the input stage's checkpoint, train what the entry says on its data, save the model.

A killed run resumes from its checkpoint; a frozen tower's features are computed once and cached."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from guie.data.manifest import read_manifest
from guie.errors import GuieError, require_inputs
from guie.model.checkpoint import read_checkpoint
from guie.runtime import training_runtime
from guie.training.loader import split_rows
from guie.training.loop import finish, fit
from guie.training.model import TRAINING_FIELDS, stage_model
from guie.training.optimisation import Optimisation, make_optimizer, stage_groups
from guie.training.resume import run_fingerprint
from guie.training.rng import seed_everything
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params


def train_stage(
    params: Params,
    name: str,
    project_root: Path,
    manifest: Path,
    weights: Path,
    input_checkpoint: Path | None,
    out: Path,
    metrics_dir: Path,
    checkpoint: Path,
    feature_cache: Path,
    fresh: bool = False,
) -> dict:
    """Train stage `name` of train.stages from `input_checkpoint` (None: the backbone `weights` with a
    fresh head) into `out`; resumes from `checkpoint` (checkpoints/train_<name>/last.pt) unless `fresh`.
    With a frozen tower and cached_views, the tower's features are kept at `feature_cache` until the end."""
    if name not in params.train.stages:
        raise GuieError(f"train: no stage {name!r} in train.stages (it has {list(params.train.stages)})")
    stage = params.train.stages[name]
    inputs = [(manifest, "manifest"), (weights, "weights")]
    require_inputs(
        f"train@{name}", *inputs, *([(input_checkpoint, f"train@{stage.from_}")] if input_checkpoint else [])
    )
    with training_runtime(params.train) as runtime:
        train_rows, heldout = split_rows(read_manifest(manifest))
        if stage.sources:
            train_rows = [r for r in train_rows if r.source in stage.sources]
            if not train_rows:
                raise GuieError(
                    f"train.stages.{name}.sources: {list(stage.sources)} have no training images in {manifest}"
                )
        start = read_checkpoint(params, input_checkpoint, TRAINING_FIELDS) if input_checkpoint else None
        depth = 0 if start is None else int(start[0].get("depth", 0)) + 1
        # seeded before the model is built: a fresh head and margin loss draw from it
        seed_everything(params.seed + depth, runtime)
        model = stage_model(params, name, weights, train_rows, start, input_checkpoint, depth).to(runtime.device)
        groups = stage_groups(model, stage, f"train.stages.{name}")
        optimisation = Optimisation(model, make_optimizer(groups, stage, runtime), runtime.grad_scaler())
        fingerprint = run_fingerprint(
            params, name, [manifest, weights, *([input_checkpoint] if input_checkpoint else [])], runtime
        )
        cached_views = 0 if stage.tower_trains else stage.cached_views
        spec = RunSpec(
            name,
            params.seed + depth,
            stage.epochs,
            stage.tower_trains,
            stage.head_trains,
            cached_views,
            checkpoint,
            fingerprint,
            fresh,
            feature_cache if cached_views else None,
            (stage.schedule, stage.warmup_steps),
        )
        summary = fit(params, optimisation, spec, train_rows, heldout, project_root, metrics_dir, runtime)
        finish(runtime, model, name, out, spec)
    return summary
