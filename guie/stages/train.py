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
from guie.params.train import BACKBONE
from guie.progress import console as progress_console
from guie.runtime import Runtime, barrier, training_runtime
from guie.threads import fixed_numerics
from guie.torch_file import DamagedFile
from guie.training.loader import split_rows
from guie.training.loop import finish, fit
from guie.training.model import InputStage, TrainingModel, read_input_stage, stage_model
from guie.training.monitor import HeldoutMonitor, ImageSource
from guie.training.optimisation import Optimisation, make_optimizer, stage_groups
from guie.training.resume import run_fingerprint
from guie.training.rng import seed_everything
from guie.training.soup import StateShare, greedy_soup, load_state, uniform_soup, wise_ft
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.layout import Layout
    from guie.params.load import Params
    from guie.params.train import IngredientParams, StageParams


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainPaths:
    """Where a training stage reads and writes."""

    project_root: Path  # the manifest's image paths are relative to it
    manifest: Path
    weights: Path  # the backbone's
    input_checkpoint: Path | None  # the input stage's model; None: the backbone with a fresh head
    out: Path  # the stage's model
    metrics_dir: Path
    checkpoint: Path  # the resume checkpoint (checkpoints/train_<name>/last.pt)
    feature_cache: Path  # a frozen tower's cached views, kept until the stage ends
    prepared_root: Path | None = None  # the prepared-image stores (built where missing); None: decode every time

    @classmethod
    def in_layout(cls, layout: Layout, params: Params, name: str) -> TrainPaths:
        """The paths `guie train <name>` uses."""
        entry = params.train.stages.get(name)  # None: train_stage names the stages there are
        source = None if entry is None or entry.from_ == BACKBONE else layout.trained(entry.from_)
        return cls(
            project_root=layout.root,
            manifest=layout.manifest,
            weights=layout.weights,
            input_checkpoint=source,
            out=layout.trained(name),
            metrics_dir=layout.metrics(f"train_{name}"),
            checkpoint=layout.checkpoint(f"train_{name}"),
            feature_cache=layout.feature_cache(f"train_{name}"),
            prepared_root=layout.prepared,
        )

    def ingredient(self, i: int) -> TrainPaths:
        """A soup's ingredient `i`: its model as ingredient<i>.pt beside the stage's resume checkpoint
        (kept after the stage), its resume state, feature cache and metrics in folders of their own."""
        label = f"ingredient{i}"
        return dataclasses.replace(
            self,
            out=self.checkpoint.parent / f"{label}.pt",
            checkpoint=self.checkpoint.parent / label / self.checkpoint.name,
            feature_cache=self.feature_cache.parent / label / self.feature_cache.name,
            metrics_dir=self.metrics_dir / label,
        )

    @property
    def files(self) -> list[Path]:
        """The files a run's result depends on (hashed into its fingerprint)."""
        return [self.manifest, self.weights, *([self.input_checkpoint] if self.input_checkpoint else [])]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inputs:
    """What every run of a stage reads."""

    name: str
    paths: TrainPaths
    fresh: bool
    train_rows: list[ManifestRow]
    heldout: list[ManifestRow]
    selection: list[ManifestRow]  # where a greedy soup and WiSE-FT choose
    start: InputStage | None  # None: the backbone with a fresh head
    # the weights every run of the stage starts from (soups, WiSE-FT's alpha = 0; see `_start_state`)
    shared_start: dict | None = None

    @property
    def depth(self) -> int:
        """Stages from the backbone to this one, minus one: the stage's seed offset."""
        return 0 if self.start is None else self.start.depth

    @property
    def scratch(self) -> Path:
        """Where the processes pick up a soup or interpolation one of them made."""
        return self.paths.checkpoint.parent


def _seeded_model(params: Params, inputs: _Inputs, runtime: Runtime, seed: int) -> TrainingModel:
    """The stage's starting model on the run's device, built after seeding (a fresh head and margin
    loss draw from the seeded generator), then given the shared start's weights when there is one:
    a run's own seed then varies its data order and augmentations only."""
    seed_everything(seed, runtime)
    model = stage_model(params, inputs.name, inputs.paths.weights, inputs.train_rows, inputs.start)
    if inputs.shared_start is not None:
        model.load_weights(inputs.shared_start)
    return model.to(runtime.device)


def _start_state(params: Params, inputs: _Inputs, runtime: Runtime) -> dict:
    """The stage's starting weights as a CPU checkpoint, drawn from the stage's seed (seed + depth):
    a soup averages runs that share this one start (Wortsman et al. 2022), and WiSE-FT interpolates
    from it."""
    own = dataclasses.replace(inputs, shared_start=None)
    return _seeded_model(params, own, runtime, params.seed + inputs.depth).state(inputs.name)


def _run_spec(params: Params, inputs: _Inputs, runtime: Runtime, seed: int, run: object = None) -> RunSpec:
    """The definition of one training run of the stage; `run`: which of a soup's runs."""
    name, paths = inputs.name, inputs.paths
    stage = params.train.stages[name]
    cached_views = 0 if stage.tower_trains else stage.cached_views
    return RunSpec(
        stage=name,
        train_rows=inputs.train_rows,
        heldout=inputs.heldout,
        seed=seed,
        epochs=stage.epochs,
        tower_trains=stage.tower_trains,
        head_trains=stage.head_trains,
        cached_views=cached_views,
        schedule=stage.schedule,
        warmup_steps=stage.warmup_steps,
        fingerprint=run_fingerprint(params, name, paths.files, runtime, run),
        fresh=inputs.fresh,
        project_root=paths.project_root,
        prepared_root=paths.prepared_root,
        out=paths.out,
        metrics_dir=paths.metrics_dir,
        checkpoint=paths.checkpoint,
        feature_cache=paths.feature_cache if cached_views else None,
    )


def _run(params: Params, inputs: _Inputs, runtime: Runtime, spec: RunSpec) -> tuple[TrainingModel, dict]:
    """Train the run `spec` defines: (the trained model, its summary)."""
    model, stage = _seeded_model(params, inputs, runtime, spec.seed), params.train.stages[inputs.name]
    groups = stage_groups(model, stage, f"train.stages.{inputs.name}")
    optimisation = Optimisation(model, make_optimizer(groups, stage, runtime), runtime.grad_scaler())
    return model, fit(params, optimisation, spec, runtime)


@fixed_numerics
def train_stage(params: Params, name: str, paths: TrainPaths, fresh: bool = False) -> dict:
    """Train stage `name` of train.stages from `paths.input_checkpoint` (None: the backbone with a fresh
    head) into `paths.out`; resumes from `paths.checkpoint` unless `fresh`. With a frozen tower and
    cached_views, the tower's features are kept at `paths.feature_cache` until the end."""
    if name not in params.train.stages:
        raise GuieError(f"train: no stage {name!r} in train.stages (it has {list(params.train.stages)})")
    stage = params.train.stages[name]
    require_inputs(
        f"train@{name}",
        (paths.manifest, "manifest"),
        (paths.weights, "weights"),
        *([(paths.input_checkpoint, f"train@{stage.from_}")] if paths.input_checkpoint else []),
    )
    for folder in dict.fromkeys(
        (paths.out.parent, paths.metrics_dir, paths.checkpoint.parent, paths.feature_cache.parent)
    ):
        writable_dir(folder, "train")  # before any training
    with training_runtime(params.train) as runtime:
        inputs = _read_inputs(params, name, paths, fresh)
        if stage.soup is not None or stage.wise_ft:
            inputs = dataclasses.replace(inputs, shared_start=_start_state(params, inputs, runtime))
        if stage.soup is not None:
            return _soup(params, inputs, runtime)
        spec = _run_spec(params, inputs, runtime, params.seed + inputs.depth)
        model, summary = _run(params, inputs, runtime, spec)
        if stage.wise_ft:
            summary |= _wise_ft_run(params, inputs, runtime, model)
        finish(runtime, model, spec)
        return summary


def _read_inputs(params: Params, name: str, paths: TrainPaths, fresh: bool) -> _Inputs:
    """The stage's rows (its sources' training rows, the held-out and selection rows) and its start."""
    stage = params.train.stages[name]
    rows = read_manifest(paths.manifest)
    train_rows, heldout = split_rows(rows)
    if stage.sources:
        train_rows = [r for r in train_rows if r.source in stage.sources]
        if not train_rows:
            raise GuieError(
                f"train.stages.{name}.sources: {list(stage.sources)} have no training images in {paths.manifest}"
            )
    selection = [r for r in rows if r.split == "selection"]
    _check_selection(stage, name, paths.manifest, selection)
    return _Inputs(
        name=name,
        paths=paths,
        fresh=fresh,
        train_rows=train_rows,
        heldout=heldout,
        selection=selection,
        start=read_input_stage(params, paths.input_checkpoint) if paths.input_checkpoint else None,
    )


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


def _soup(params: Params, inputs: _Inputs, runtime: Runtime) -> dict:
    """Train each ingredient, average them as soup.method says, write the soup to the stage's model
    and report every ingredient and the soup in metrics.json."""
    paths, model = _train_ingredients(params, inputs, runtime)
    if model is None:  # every ingredient was already trained: a model to score soups with
        model = _seeded_model(params, inputs, runtime, params.seed + inputs.depth)
    state, report = _mix(params, inputs, runtime, model, paths)
    if params.train.stages[inputs.name].wise_ft:
        state, report["wise_ft"] = _wise_ft(params, inputs, runtime, model, state)
        report["heldout_mp5"] = report["wise_ft"]["heldout_mp5"]
    if runtime.main:
        metrics_dir = inputs.paths.metrics_dir
        torch_save({k: v for k, v in state.items() if k not in ("fingerprint", "summary")}, inputs.paths.out)
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


def _train_ingredients(params: Params, inputs: _Inputs, runtime: Runtime) -> tuple[list[Path], TrainingModel | None]:
    """Each ingredient's model file (see `TrainPaths.ingredient`; one already trained with the same
    fingerprint is not retrained), and the last model trained."""
    paths, model = [], None
    for i, ingredient in enumerate(params.train.stages[inputs.name].soup.ingredients):
        run_params = _ingredient_params(params, ingredient)
        run_inputs = dataclasses.replace(inputs, paths=inputs.paths.ingredient(i))
        seed = params.seed + inputs.depth + ingredient.seed
        spec = _run_spec(run_params, run_inputs, runtime, seed, run=[i, dataclasses.asdict(ingredient)])
        paths.append(spec.out)
        if not inputs.fresh and _trained(spec.out, spec.fingerprint):
            continue
        model, summary = _run(run_params, run_inputs, runtime, spec)
        # the run's summary travels with its weights, for the report of a soup resumed after a kill
        finish(runtime, model, spec, {"fingerprint": spec.fingerprint, "summary": summary})
    return paths, model


def _trained(path: Path, fingerprint: str) -> bool:
    """Whether `path` holds an ingredient run trained with `fingerprint` (a damaged one is trained again)."""
    try:
        return path.is_file() and load_state(path).get("fingerprint") == fingerprint
    except DamagedFile as err:
        progress_console.print(f"{path} is {err.why}; training that ingredient again")
        return False


def _mix(
    params: Params, inputs: _Inputs, runtime: Runtime, model: TrainingModel, paths: list[Path]
) -> tuple[dict, dict]:
    """The soup's checkpoint and the report of every ingredient and the soup (mP@5 of the head
    features: on held-out classes, and on the selection split for a greedy soup)."""
    stage = params.train.stages[inputs.name]
    selection_scores = soup_selection = None
    if stage.soup.method == "greedy":
        state, chosen, selection_scores, soup_selection = greedy_soup(
            paths, _scorer(params, inputs, runtime, model, inputs.selection), StateShare(runtime, inputs.scratch)
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
    images = ImageSource(root=inputs.paths.project_root, preprocess=model.embedder.preprocess)
    monitor = HeldoutMonitor(params, rows, images, runtime, frozen)

    def score(state: dict) -> float:
        model.embedder.tower.load_state_dict(state["tower"])
        model.embedder.head.load_state_dict(state["head"])
        return monitor(model.embedder)

    return score


def _wise_ft(
    params: Params, inputs: _Inputs, runtime: Runtime, model: TrainingModel, trained: dict
) -> tuple[dict, dict]:
    """WiSE-FT between the stage's start and `trained`: (the chosen checkpoint, the report of each
    mixing coefficient's selection mP@5 and the chosen one's held-out mP@5)."""
    alphas = params.train.stages[inputs.name].wise_ft
    scorer, share = _scorer(params, inputs, runtime, model, inputs.selection), StateShare(runtime, inputs.scratch)
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


def _wise_ft_run(params: Params, inputs: _Inputs, runtime: Runtime, model: TrainingModel) -> dict:
    """WiSE-FT on a trained run: `model` gets the chosen weights, and the run's metrics.json the
    report (its heldout_mp5 becomes the chosen model's); the stage's summary."""
    # a copy: on a CPU the state's tensors are the model's own, which scoring overwrites
    trained = copy.deepcopy(model.state(inputs.name))
    state, report = _wise_ft(params, inputs, runtime, model, trained)
    model.load_weights(state)
    if runtime.main:
        path = inputs.paths.metrics_dir / "metrics.json"
        metrics = json.loads(path.read_text()) | {"heldout_mp5": report["heldout_mp5"], "wise_ft": report}
        write_text(path, json.dumps(metrics, indent=4, sort_keys=True) + "\n")
    barrier(runtime)
    return {"heldout_mp5": report["heldout_mp5"], "wise_ft_alpha": report["alpha"]}
