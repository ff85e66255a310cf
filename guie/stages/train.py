"""The `train` stage, one DVC stage per entry of train.stages (`train@<name>`): start from the
backbone or the input stage's checkpoint, train what the entry says on its data, save the model.
With `soup:` the entry is trained once per ingredient, every run from the same start, and the
runs' weights are averaged; with `wise_ft:` the weights are interpolated between the start and the
trained ones, the mixing coefficient chosen on the selection split.

A killed run resumes from its checkpoint; a frozen tower's features are computed once and cached."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dvclive import Live

from guie.atomic import torch_save, writable_dir, write_text
from guie.data.manifest import ManifestRow, read_manifest
from guie.errors import GuieError, require_inputs
from guie.model.checkpoint import read_checkpoint
from guie.progress import console as progress_console
from guie.runtime import Runtime, barrier, training_runtime
from guie.threads import fixed_numerics
from guie.torch_file import DamagedFile
from guie.training.loader import split_rows
from guie.training.loop import finish, fit
from guie.training.model import TRAINING_FIELDS, TrainingModel, stage_model
from guie.training.monitor import HeldoutMonitor
from guie.training.optimisation import Optimisation, make_optimizer, stage_groups
from guie.training.resume import run_fingerprint
from guie.training.rng import seed_everything
from guie.training.soup import StateShare, greedy_soup, load_state, uniform_soup, wise_ft
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params
    from guie.params.train import IngredientParams, StageParams


@dataclasses.dataclass
class _Inputs:
    """What every run of a stage reads."""

    name: str
    project_root: Path
    manifest: Path
    weights: Path
    input_checkpoint: Path | None
    train_rows: list[ManifestRow]
    heldout: list[ManifestRow]
    start: tuple[dict, object] | None
    depth: int
    prepared_root: Path | None  # the prepared-image stores; None: decode every time
    # the weights every run of the stage starts from (soups, WiSE-FT's alpha = 0; see `_start_state`)
    shared_start: dict | None = None
    scratch: Path | None = None  # where the processes pick up a soup or interpolation one of them made

    @property
    def files(self) -> list[Path]:
        """The files a run's result depends on (hashed into its fingerprint)."""
        return [self.manifest, self.weights, *([self.input_checkpoint] if self.input_checkpoint else [])]


def _seeded_model(params: Params, inputs: _Inputs, runtime: Runtime, seed: int) -> TrainingModel:
    """The stage's starting model on the run's device, built after seeding (a fresh head and margin
    loss draw from the seeded generator), then given the shared start's weights when there is one:
    a run's own seed then varies its data order and augmentations only."""
    seed_everything(seed, runtime)
    model = stage_model(
        params, inputs.name, inputs.weights, inputs.train_rows, inputs.start, inputs.input_checkpoint, inputs.depth
    )
    if inputs.shared_start is not None:
        model.load_weights(inputs.shared_start)
    return model.to(runtime.device)


def _start_state(params: Params, inputs: _Inputs, runtime: Runtime) -> dict:
    """The stage's starting weights as a CPU checkpoint, drawn from the stage's seed (seed + depth):
    a soup averages runs that share this one start (Wortsman et al. 2022), and WiSE-FT interpolates
    from it."""
    own = dataclasses.replace(inputs, shared_start=None)
    return _seeded_model(params, own, runtime, params.seed + inputs.depth).state(inputs.name)


def _run(
    params: Params,
    inputs: _Inputs,
    runtime: Runtime,
    seed: int,
    paths: tuple[Path, Path, Path],
    fresh: bool,
    run: object = None,
) -> tuple[TrainingModel, RunSpec, dict]:
    """One training run of the stage: (the trained model, its run spec, its summary). `paths`: the
    resume checkpoint, the feature cache and the DVCLive folder; `run`: which of a soup's runs."""
    name, stage = inputs.name, params.train.stages[inputs.name]
    checkpoint, feature_cache, metrics_dir = paths
    model = _seeded_model(params, inputs, runtime, seed)
    groups = stage_groups(model, stage, f"train.stages.{name}")
    optimisation = Optimisation(model, make_optimizer(groups, stage, runtime), runtime.grad_scaler())
    cached_views = 0 if stage.tower_trains else stage.cached_views
    spec = RunSpec(
        name,
        seed,
        stage.epochs,
        stage.tower_trains,
        stage.head_trains,
        cached_views,
        checkpoint,
        run_fingerprint(params, name, inputs.files, runtime, run),
        fresh,
        feature_cache if cached_views else None,
        (stage.schedule, stage.warmup_steps),
    )
    summary = fit(
        params,
        optimisation,
        spec,
        inputs.train_rows,
        inputs.heldout,
        inputs.project_root,
        metrics_dir,
        runtime,
        inputs.prepared_root,
    )
    return model, spec, summary


@fixed_numerics
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
    prepared_root: Path | None = None,
) -> dict:
    """Train stage `name` of train.stages from `input_checkpoint` (None: the backbone `weights` with a
    fresh head) into `out`; resumes from `checkpoint` (checkpoints/train_<name>/last.pt) unless `fresh`.
    With a frozen tower and cached_views, the tower's features are kept at `feature_cache` until the end;
    views are read from the prepared-image stores under `prepared_root` (built where missing)."""
    if name not in params.train.stages:
        raise GuieError(f"train: no stage {name!r} in train.stages (it has {list(params.train.stages)})")
    stage = params.train.stages[name]
    require_inputs(
        f"train@{name}",
        (manifest, "manifest"),
        (weights, "weights"),
        *([(input_checkpoint, f"train@{stage.from_}")] if input_checkpoint else []),
    )
    for folder in dict.fromkeys((out.parent, metrics_dir, checkpoint.parent, feature_cache.parent)):
        writable_dir(folder, "train")  # before any training
    with training_runtime(params.train) as runtime:
        rows = read_manifest(manifest)
        train_rows, heldout = split_rows(rows)
        if stage.sources:
            train_rows = [r for r in train_rows if r.source in stage.sources]
            if not train_rows:
                raise GuieError(
                    f"train.stages.{name}.sources: {list(stage.sources)} have no training images in {manifest}"
                )
        selection = [r for r in rows if r.split == "selection"]
        _check_selection(stage, name, manifest, selection)
        start = read_checkpoint(params, input_checkpoint, TRAINING_FIELDS) if input_checkpoint else None
        depth = 0 if start is None else int(start[0].get("depth", 0)) + 1
        inputs = _Inputs(
            name, project_root, manifest, weights, input_checkpoint, train_rows, heldout, start, depth, prepared_root
        )
        inputs.scratch = checkpoint.parent
        if stage.soup is not None or stage.wise_ft:
            inputs.shared_start = _start_state(params, inputs, runtime)
        if stage.soup is None:
            model, spec, summary = _run(
                params, inputs, runtime, params.seed + depth, (checkpoint, feature_cache, metrics_dir), fresh
            )
            if stage.wise_ft:
                summary |= _wise_ft_run(params, inputs, runtime, model, selection, metrics_dir)
            finish(runtime, model, name, out, spec)
            return summary
        return _soup(params, inputs, runtime, selection, out, metrics_dir, (checkpoint, feature_cache), fresh)


def _check_selection(stage: StageParams, name: str, manifest: Path, selection: list[ManifestRow]) -> None:
    """A greedy soup and WiSE-FT choose on the selection split: refuse a manifest without one."""
    if selection:
        return
    if stage.soup is not None and stage.soup.method == "greedy":
        raise GuieError(
            f"train.stages.{name}.soup.method: greedy chooses ingredients on the selection split, and "
            f"{manifest} has none; set data.manifest.selection_fraction (e.g. 0.05) or soup.method: uniform"
        )
    if stage.wise_ft:
        raise GuieError(
            f"train.stages.{name}.wise_ft: the mixing coefficient is chosen on the selection split, and "
            f"{manifest} has none; set data.manifest.selection_fraction (e.g. 0.05) or remove wise_ft"
        )


def _ingredient_params(params: Params, ingredient: IngredientParams) -> Params:
    """`params` with the ingredient's augmentation overrides (validated when params load)."""
    if not ingredient.augment:
        return params
    augment = dataclasses.replace(params.train.augment, **ingredient.augment)
    return dataclasses.replace(params, train=dataclasses.replace(params.train, augment=augment))


def _soup(
    params: Params,
    inputs: _Inputs,
    runtime: Runtime,
    selection: list[ManifestRow],
    out: Path,
    metrics_dir: Path,
    run_state: tuple[Path, Path],
    fresh: bool,
) -> dict:
    """Train each ingredient, average them as soup.method says, write the soup to `out` and report
    every ingredient and the soup in metrics.json."""
    paths, model = _train_ingredients(params, inputs, runtime, metrics_dir, run_state, fresh)
    if model is None:  # every ingredient was already trained: a model to score soups with
        model = _seeded_model(params, inputs, runtime, params.seed + inputs.depth)
    state, report = _mix(params, inputs, runtime, model, paths, selection)
    if params.train.stages[inputs.name].wise_ft:
        state, report["wise_ft"] = _wise_ft(params, inputs, runtime, model, state, selection)
        report["heldout_mp5"] = report["wise_ft"]["heldout_mp5"]
    if runtime.main:
        torch_save({k: v for k, v in state.items() if k not in ("fingerprint", "summary")}, out)
        # a plot of each ingredient's mP@5 (dvc plots show), then the report as the stage's metrics
        with Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=False) as live:
            for i in range(len(paths)):
                for key, value in report["ingredients"][str(i)].items():
                    if key != "in_soup":
                        live.log_metric(key, value)
                live.next_step()
        write_text(metrics_dir / "metrics.json", json.dumps(report, indent=4, sort_keys=True) + "\n")
    barrier(runtime)
    return {
        "heldout_mp5": report["heldout_mp5"],
        "soup_size": len(report["soup"]["ingredients"]),
        "ingredients": len(paths),
        **({"wise_ft_alpha": report["wise_ft"]["alpha"]} if "wise_ft" in report else {}),
        "compute": runtime.describe,
    }


def _train_ingredients(
    params: Params, inputs: _Inputs, runtime: Runtime, metrics_dir: Path, run_state: tuple[Path, Path], fresh: bool
) -> tuple[list[Path], TrainingModel | None]:
    """Each ingredient's weights, as ingredient<i>.pt beside the stage's resume checkpoint (kept after
    the stage; one already trained with the same fingerprint is not retrained), and the last model
    trained. `run_state`: the stage's resume checkpoint and feature cache paths."""
    (checkpoint, feature_cache), name, paths, model = run_state, inputs.name, [], None
    for i, ingredient in enumerate(params.train.stages[name].soup.ingredients):
        label = f"ingredient{i}"
        path = checkpoint.parent / f"{label}.pt"
        paths.append(path)
        run_params, run = _ingredient_params(params, ingredient), [i, dataclasses.asdict(ingredient)]
        fingerprint = run_fingerprint(run_params, name, inputs.files, runtime, run)
        if not fresh and _trained(path, fingerprint):
            continue
        # each run's resume state and feature cache in a folder of its own beside the stage's
        run_paths = (checkpoint.parent / label / checkpoint.name, feature_cache.parent / label / feature_cache.name)
        run_paths += (metrics_dir / label,)
        seed = params.seed + inputs.depth + ingredient.seed
        model, spec, summary = _run(run_params, inputs, runtime, seed, run_paths, fresh, run)
        # the run's summary travels with its weights, for the report of a soup resumed after a kill
        finish(runtime, model, name, path, spec, {"fingerprint": spec.fingerprint, "summary": summary})
    return paths, model


def _trained(path: Path, fingerprint: str) -> bool:
    """Whether `path` holds an ingredient run trained with `fingerprint` (a damaged one is trained again)."""
    try:
        return path.is_file() and load_state(path).get("fingerprint") == fingerprint
    except DamagedFile as err:
        progress_console.print(f"{path} is {err.why}; training that ingredient again")
        return False


def _mix(
    params: Params,
    inputs: _Inputs,
    runtime: Runtime,
    model: TrainingModel,
    paths: list[Path],
    selection: list[ManifestRow],
) -> tuple[dict, dict]:
    """The soup's checkpoint and the report of every ingredient and the soup (mP@5 of the head
    features: on held-out classes, and on the selection split for a greedy soup)."""
    stage = params.train.stages[inputs.name]
    selection_scores = soup_selection = None
    if stage.soup.method == "greedy":
        state, chosen, selection_scores, soup_selection = greedy_soup(
            paths, _scorer(params, inputs, runtime, model, selection), StateShare(runtime, inputs.scratch)
        )
    else:
        state, chosen = uniform_soup(paths, StateShare(runtime, inputs.scratch))
    soup_heldout = _scorer(params, inputs, runtime, model, inputs.heldout)(state)
    report = {
        "heldout_mp5": soup_heldout,
        "soup": {"method": stage.soup.method, "ingredients": chosen, "heldout_mp5": soup_heldout},
        "ingredients": {},
    }
    if soup_selection is not None:
        report["soup"]["selection_mp5"] = soup_selection
    for i, path in enumerate(paths):
        entry = {"heldout_mp5": load_state(path)["summary"]["heldout_mp5"], "in_soup": i in chosen}
        if selection_scores is not None:
            entry["selection_mp5"] = selection_scores[i]
        report["ingredients"][str(i)] = entry
    return state, report


def _scorer(
    params: Params, inputs: _Inputs, runtime: Runtime, model: TrainingModel, rows: list[ManifestRow]
) -> Callable[[dict], float]:
    """A checkpoint's mP@5 of the head features on `rows`, scored with `model` (whose tower and head
    it overwrites)."""
    frozen = not params.train.stages[inputs.name].tower_trains  # the same tower in every state: embedded once
    monitor = HeldoutMonitor(params, rows, model.embedder.preprocess, inputs.project_root, runtime, frozen)

    def score(state: dict) -> float:
        model.embedder.tower.load_state_dict(state["tower"])
        model.embedder.head.load_state_dict(state["head"])
        return monitor(model.embedder)

    return score


def _wise_ft(
    params: Params, inputs: _Inputs, runtime: Runtime, model: TrainingModel, trained: dict, selection: list[ManifestRow]
) -> tuple[dict, dict]:
    """WiSE-FT between the stage's start and `trained`: (the chosen checkpoint, the report of each
    mixing coefficient's selection mP@5 and the chosen one's held-out mP@5)."""
    alphas = params.train.stages[inputs.name].wise_ft
    scorer, share = _scorer(params, inputs, runtime, model, selection), StateShare(runtime, inputs.scratch)
    state, alpha, scores = wise_ft(inputs.shared_start, trained, alphas, scorer, share)
    report = {
        "alpha": alpha,
        "selection_mp5": scores[alphas.index(alpha)],
        "heldout_mp5": _scorer(params, inputs, runtime, model, inputs.heldout)(state),
        "points": {
            str(i): {"alpha": a, "selection_mp5": v} for i, (a, v) in enumerate(zip(alphas, scores, strict=True))
        },
    }
    return state, report


def _wise_ft_run(
    params: Params,
    inputs: _Inputs,
    runtime: Runtime,
    model: TrainingModel,
    selection: list[ManifestRow],
    metrics_dir: Path,
) -> dict:
    """WiSE-FT on a trained run: `model` gets the chosen weights, and the run's metrics.json the
    report (its heldout_mp5 becomes the chosen model's); the stage's summary."""
    # a copy: on a CPU the state's tensors are the model's own, which scoring overwrites
    trained = copy.deepcopy(model.state(inputs.name))
    state, report = _wise_ft(params, inputs, runtime, model, trained, selection)
    model.load_weights(state)
    if runtime.main:
        path = metrics_dir / "metrics.json"
        metrics = json.loads(path.read_text()) | {"heldout_mp5": report["heldout_mp5"], "wise_ft": report}
        write_text(path, json.dumps(metrics, indent=4, sort_keys=True) + "\n")
    barrier(runtime)
    return {"heldout_mp5": report["heldout_mp5"], "wise_ft_alpha": report["alpha"]}
