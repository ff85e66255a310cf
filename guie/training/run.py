"""The two training stages of the 6th-place recipe.

Stage 1 (`train_head`): the tower is frozen; BN-Dropout-Linear head and sub-center ArcFace learn.
Stage 2 (`train_finetune`): resblocks from `unfreeze_from` to the end are unfrozen and trained with
their own (much smaller) learning rate next to the head's.
Each stage writes one checkpoint and logs per-epoch loss, lr and held-out mP@5 with DVCLive.
While it runs, a stage keeps a resume checkpoint (model, optimizer, progress, RNG states) that a
killed run picks up from, reproducing the uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from guie.atomic import torch_save
from guie.data.augment import TrainAugment
from guie.data.dataset import (
    CacheRequest,
    EpochBatches,
    ManifestDataset,
    SeededViews,
    available_memory,
    plan_image_cache,
)
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8
from guie.errors import GuieError
from guie.feature_cache import CachedViews, build_view_cache, tower_features
from guie.model.checkpoint import embedder_from_definition, read_checkpoint
from guie.model.definition import PARAM_KEYS, ModelDefinition, definition_from_params
from guie.model.embedder import Embedder
from guie.model.loss import SubCenterArcFace, dynamic_margins
from guie.params.fingerprint import shaping_values
from guie.params.train import RUN_KNOBS
from guie.progress import console as progress_console
from guie.progress import progress_bar
from guie.retrieval_task import build_task, score
from guie.runtime import Runtime, barrier, gather_batch

if TYPE_CHECKING:
    from guie.params.load import Params


def seed_everything(seed: int, runtime: Runtime | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # byte-identical on CPU; on GPUs some kernels (scatter-add backward) only have racy versions
    torch.use_deterministic_algorithms(True, warn_only=runtime is not None and runtime.on_gpu)


def _cpu(state: dict) -> dict:
    # a checkpoint written on a GPU must load on a CPU-only machine
    return {k: v.cpu() for k, v in state.items()}


@dataclass
class TrainingModel:
    """Everything a stage trains, and what it saves: tower, head, margin loss, class list."""

    definition: ModelDefinition
    embedder: Embedder
    arcface: SubCenterArcFace
    classes: list[str]

    def to(self, device: torch.device) -> TrainingModel:
        self.embedder.to(device)
        self.arcface.to(device)
        return self

    def state(self, stage: str, with_tower: bool = True) -> dict:
        state = {
            "stage": stage,
            "definition": self.definition.to_dict(),
            "classes": self.classes,
            "tower": _cpu(self.embedder.tower.state_dict()) if with_tower else None,
            "head": _cpu(self.embedder.head.state_dict()),
            "arcface": _cpu(self.arcface.state_dict()),
        }
        return {k: v for k, v in state.items() if v is not None}


def build_training_model(params: Params, weights: Path, classes: list[str], margins: torch.Tensor) -> TrainingModel:
    arcface = SubCenterArcFace(params.model.head_dim, margins, params.loss.subcenters, params.loss.scale)
    definition = definition_from_params(params.model, params.preprocess)
    return TrainingModel(definition, embedder_from_definition(definition, weights), arcface, classes)


def new_training_model(params: Params, weights: Path, train_rows: list[ManifestRow]) -> TrainingModel:
    """Stage 1's starting point: backbone weights, fresh head, margins from the class counts."""
    counts = Counter(r.label for r in train_rows)
    classes = sorted(counts)
    margins = dynamic_margins(
        [counts[c] for c in classes], params.loss.margin_min, params.loss.margin_max, params.loss.margin_power
    )
    return build_training_model(params, weights, classes, margins)


def load_training_model(params: Params, checkpoint: Path, weights: Path) -> TrainingModel:
    """Rebuild the model of a stage checkpoint, which must be the model params define."""
    state, _ = read_checkpoint(params, checkpoint, tuple(PARAM_KEYS))
    model = build_training_model(params, weights, list(state["classes"]), state["arcface"]["margins"])
    model.embedder.tower.load_state_dict(state["tower"])
    model.embedder.head.load_state_dict(state["head"])
    model.arcface.load_state_dict(state["arcface"])
    return model


def split_rows(rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    train = [r for r in rows if r.split == "train"]
    heldout = [r for r in rows if r.split == "heldout"]
    if not train:
        raise GuieError("manifest has no training images (split 'train')")
    return train, heldout


class HeldoutMonitor:
    """mP@5 of the head features on held-out classes (no PCA): the per-epoch learning signal.

    Views are resized once and cached like training's, i.e. rounded to uint8 after the resize;
    the `evaluate` stage scores the exported model exactly. While the tower is frozen its outputs
    are computed once and only the head runs each epoch."""

    def __init__(
        self,
        params: Params,
        heldout: list[ManifestRow],
        preprocess: EvalPreprocess,
        project_root: Path,
        runtime: Runtime,
        frozen_tower: bool,
        cache: bool,
    ):
        self.params, self.runtime, self.frozen_tower = params, runtime, frozen_tower
        self.task = build_task(heldout, [], params.evaluate.queries_per_class)
        rows = self.task.queries + self.task.index
        self.dataset = ManifestDataset(
            rows, project_root, Normalize(preprocess), prepare=ResizeToUint8(preprocess), cache=cache
        )
        self.tower_out: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, embedder: Embedder) -> float:
        if not self.task.queries:
            return float("nan")
        tower_out = self.tower_out
        if tower_out is None:
            tower_out = tower_features(
                embedder.tower,
                self.dataset,
                range(len(self.dataset)),
                self.params.train.batch_size,
                self.runtime,
                "held-out mP@5",
            )
            if self.frozen_tower:
                self.tower_out = tower_out
        was_training = embedder.training
        embedder.eval()
        batch = self.params.train.batch_size
        emb = torch.cat(
            [
                embedder.from_tower(self.runtime.to_device(tower_out[i : i + batch])).float().cpu()
                for i in range(0, len(tower_out), batch)
            ]
        ).numpy()
        embedder.train(was_training)
        n = len(self.task.queries)
        per_query, _ = score(self.task, emb[:n], emb[n:], self.params.evaluate.k)
        return float(np.mean(list(per_query.values())))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


# What a run fingerprint leaves out: run knobs, and device/precision, which enter as what they
# resolved to on this machine ("compute").
_NOT_FINGERPRINTED = RUN_KNOBS | {"train.device", "train.precision"}


def run_fingerprint(params: Params, stage: str, inputs: list[Path], runtime: Runtime) -> str:
    """A hash of everything a stage's result depends on: a checkpoint resumes only a run with the same one.
    Each stage reads its own section (train.head or train.finetune), never the other's."""
    other = "train.finetune" if stage == "train_head" else "train.head"
    train = shaping_values(params.train, "train", _NOT_FINGERPRINTED | {other})
    payload = {
        "stage": stage,
        "seed": params.seed,
        "preprocess": asdict(params.preprocess),
        "model": asdict(params.model),
        "loss": asdict(params.loss),
        "train": train,
        "compute": [runtime.device.type, str(runtime.amp_dtype)],  # what "auto" resolved to on this machine
        "evaluate": [params.evaluate.k, params.evaluate.queries_per_class],
        "inputs": [_sha256(p) for p in inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Progress:
    """Where a run is; saved in checkpoints."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # the current epoch's summed per-image loss so far
    seen: int = 0
    history: list[dict] = field(default_factory=list)  # every DVCLive step logged so far, replayed on resume


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # plain types: loadable with weights_only
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Trainer:
    """What a step updates, and what a checkpoint saves besides the model."""

    model: TrainingModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # fp16 loss scaling; a no-op otherwise


def save_checkpoint(
    path: Path, fingerprint: str, stage: str, trainer: Trainer, progress: Progress, frozen_tower: bool
) -> None:
    """Write the resume checkpoint atomically; refuse to replace a good one with non-finite weights.
    A frozen tower is left out: it is the weights file's, and ViT-H's would add 2.5 GB per write."""
    model = trainer.model
    trained = [p for group in trainer.optimizer.param_groups for p in group["params"]]  # frozen weights cannot diverge
    if not all(bool(torch.isfinite(t).all()) for t in trained):
        raise GuieError(
            f"{stage}: weights became non-finite at epoch {progress.epoch + 1} step {progress.step}; {path} keeps the last good state; lower the learning rates (train.*)"
        )
    state = {
        "fingerprint": fingerprint,
        "progress": asdict(progress),
        "model": model.state(stage, with_tower=not frozen_tower),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": _rng_state(),
    }
    torch_save(state, path)


def _load_resume(
    path: Path, fingerprint: str, fresh: bool, stage: str, trainer: Trainer, runtime: Runtime
) -> tuple[Progress, dict] | None:
    """The progress and RNG state to go on from, after loading model and optimizer; None = start fresh."""
    say = progress_console.print if runtime.main else (lambda *_: None)
    if not path.is_file():
        return None
    if fresh:
        say(f"{stage}: --fresh: ignoring {path}, starting over")
        return None
    state = torch.load(path, map_location=runtime.device, weights_only=True)
    if state.get("fingerprint") != fingerprint:
        say(f"{stage}: {path} is from other params or inputs; starting fresh")
        return None
    model = trainer.model
    if "tower" in state["model"]:
        model.embedder.tower.load_state_dict(state["model"]["tower"])
    model.embedder.head.load_state_dict(state["model"]["head"])
    model.arcface.load_state_dict(state["model"]["arcface"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    progress = Progress(**state["progress"])
    say(f"{stage}: resuming from {path} at epoch {progress.epoch + 1} step {progress.step}")
    rng = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state["rng"].items()}
    return progress, rng


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _log(live: Live | None, record: dict) -> None:
    if live is None:
        return
    for key, value in record.items():
        live.log_metric(key, value)
    live.next_step()


@dataclass
class Run:
    """One stage's training run: what it trains on, where it checkpoints."""

    stage: str
    seed: int  # shuffling and augmentation seed of this stage
    epochs: int
    tower_trainable: bool
    cached_views: int  # > 0: train the head on this many cached views of the frozen tower's output
    checkpoint: Path  # the resume checkpoint: outside DVC's outs, which DVC deletes before a run
    fingerprint: str
    fresh: bool
    feature_cache: Path | None = None  # where the cached views are kept (when cached_views > 0)


class TrainStep(nn.Module):
    """(images or cached tower features, labels) -> sub-center ArcFace loss of the global batch.

    Under torchrun the processes swap tower features, so head, BatchNorm and loss see the whole
    global batch on every process; DDP then averages the tower's gradients."""

    def __init__(self, model: TrainingModel, runtime: Runtime, tower_trainable: bool, cached: bool):
        super().__init__()
        self.tower = None if cached else model.embedder.tower
        self.head, self.arcface = model.embedder.head, model.arcface
        self.runtime, self.tower_trainable = runtime, tower_trainable

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.tower is not None:
            with torch.set_grad_enabled(self.tower_trainable):
                x = self.tower(x)
        feats, target = gather_batch(self.runtime, x.float()), gather_batch(self.runtime, target)
        return self.arcface(self.head(feats), target)


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was NaN/inf; `check` syncs and reports it.
    On a GPU, checking every step would stall the pipeline, so the loop checks every few steps."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_loss = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        new = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_loss = torch.where(new, loss.detach().float(), self.bad_loss)

    def check(
        self, run: Run, epoch: int, batches: EpochBatches, optimizer: torch.optim.Optimizer, rows: list[ManifestRow]
    ) -> None:
        step = int(self.first_bad)
        if step < 0:
            return
        kept = (
            f"{run.checkpoint} (the last good state) is kept"
            if run.checkpoint.is_file()
            else "no checkpoint was written yet"
        )
        lrs = ", ".join(f"{k} {v:g}" for k, v in _lrs(optimizer).items())
        paths = ", ".join(rows[i].path for i in batches.global_batch(step))
        raise GuieError(
            f"{run.stage}: loss became {float(self.bad_loss)} at epoch {epoch + 1} step {step + 1} ({lrs}); "
            f"{kept}; lower the learning rates in params.yaml (train.*). The batch's images: {paths}"
        )


def _out_of_memory(run: Run, params: Params, runtime: Runtime) -> GuieError:
    return GuieError(
        f"{run.stage}: out of GPU memory at train.batch_size {params.train.batch_size} ({runtime.describe}); lower train.batch_size, "
        "set train.precision to bf16 (or fp16 on GPUs without bf16)"
        + (", or raise train.finetune.unfreeze_from to train fewer blocks" if run.tower_trainable else "")
    )


def image_caches(
    params: Params, run: Run, n_train: int, n_heldout: int, available: int | None, processes: int = 1
) -> tuple[bool, bool, list[str]]:
    """Whether the training images and the held-out images are cached in RAM (`train.cache_images`).

    Only images that are revisited are cached: the training images when the tower runs on every
    batch for several epochs (stage 2, or stage 1 with `cached_views: 0`; stage 1's feature pass
    visits each image once per view, view after view, so a cache would hold every image for one
    reuse), and the held-out images when the tower trains (a frozen tower's are embedded once).
    The caches must fit in `available` bytes (`plan_image_cache`); a warning names the knob if not.
    Returns (cache training images, cache held-out images, warnings)."""
    if not params.train.cache_images:
        return False, False, []
    requests, wanted = [], []
    if not run.cached_views and run.epochs > 1:
        requests.append(CacheRequest("training images", n_train, processes * max(1, params.train.num_workers)))
        wanted.append("train")
    if run.tower_trainable:
        requests.append(
            CacheRequest("held-out images", n_heldout)
        )  # embedded without workers, sharded between processes
        wanted.append("heldout")
    decisions, warnings = plan_image_cache(requests, params.preprocess.image_size, available)
    chosen = dict(zip(wanted, decisions))
    return chosen.get("train", False), chosen.get("heldout", False), [f"{run.stage}: {w}" for w in warnings]


def fit(
    params: Params,
    trainer: Trainer,
    run: Run,
    train_rows: list[ManifestRow],
    heldout: list[ManifestRow],
    project_root: Path,
    metrics_dir: Path,
    runtime: Runtime,
) -> dict:
    model = trainer.model
    embedder, optimizer, scaler = model.embedder, trainer.optimizer, trainer.scaler
    labels = {c: i for i, c in enumerate(model.classes)}
    pre = embedder.preprocess
    augment = TrainAugment(pre, params.train.augment)
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world))  # each holds its own caches
    cache_train, cache_heldout, warnings = image_caches(
        params, run, len(train_rows), len(heldout), available_memory(), processes_here
    )
    for warning in warnings if runtime.main else []:
        progress_console.print(warning, markup=False, highlight=False)
    views = SeededViews(
        ManifestDataset(train_rows, project_root, augment, labels, prepare=ResizeToUint8(pre), cache=cache_train)
    )
    batch_size = params.train.batch_size
    drop_last = (
        len(views) > batch_size or runtime.world > 1
    )  # BatchNorm needs > 1 sample per batch; processes need equal chunks
    if runtime.world > 1 and len(views) < batch_size:
        raise GuieError(
            f"{run.stage}: {len(views)} training images are fewer than one global batch (train.batch_size {batch_size})"
        )
    batches = EpochBatches(len(views), batch_size, run.seed, drop_last, runtime.rank, runtime.world)
    resumed = _load_resume(run.checkpoint, run.fingerprint, run.fresh, run.stage, trainer, runtime)
    dataset, num_workers = views, params.train.num_workers
    if run.cached_views:
        features = build_view_cache(
            embedder.tower,
            views,
            run.seed,
            run.cached_views,
            params.train.batch_size,
            runtime,
            num_workers,
            run.feature_cache,
            run.fingerprint,
        )
        dataset, num_workers = (
            CachedViews(features, [views.base.label(i) for i in range(len(views))]),
            0,
        )  # in-memory: no workers
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # keeps each worker's image cache alive
        pin_memory=runtime.on_gpu,
        generator=torch.Generator().manual_seed(run.seed),  # leaves the global RNG (dropout's) alone
    )
    step_module = TrainStep(model, runtime, run.tower_trainable, bool(run.cached_views))
    forward = (
        DistributedDataParallel(
            step_module, device_ids=[runtime.device] if runtime.on_gpu else None, broadcast_buffers=False
        )
        if runtime.world > 1
        else step_module
    )
    monitor = HeldoutMonitor(
        params, heldout, pre, project_root, runtime, frozen_tower=not run.tower_trainable, cache=cache_heldout
    )
    every = params.train.checkpoint_every
    check_every = params.train.sync_every if runtime.on_gpu else 1  # a CPU "sync" is free: stop before a bad update
    live_context = Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=False) if runtime.main else nullcontext()
    with live_context as live:
        if resumed is None:
            progress = Progress(history=[{"heldout_mp5": monitor(embedder)}])
        else:
            progress, rng = resumed
            _set_rng_state(rng)
        for record in progress.history:
            _log(live, record)
        for epoch in range(progress.epoch, run.epochs):
            embedder.train()
            if not run.tower_trainable:
                embedder.tower.eval()
            batches.set_epoch(epoch, start=progress.step)
            if run.cached_views:
                dataset.set_epoch(epoch)
            watch = NonFiniteWatch(runtime.device)
            loss_sum = torch.tensor(
                progress.loss_sum, dtype=torch.float64, device=runtime.device
            )  # summed on the device: no sync
            with progress_bar(
                f"{run.stage} epoch {epoch + 1}/{run.epochs}", batches.per_epoch, enabled=runtime.main
            ) as advance:
                advance(progress.step)
                for x, target, _ in loader:
                    n = len(target) * runtime.world
                    try:
                        with runtime.autocast():
                            loss = forward(runtime.to_device(x), runtime.to_device(target))
                        watch.observe(loss, progress.step)
                        if (progress.step + 1) % check_every == 0:
                            watch.check(run, epoch, batches, optimizer, train_rows)
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    except torch.OutOfMemoryError:
                        raise _out_of_memory(run, params, runtime) from None
                    loss_sum += loss.detach().double() * n
                    progress.seen += n
                    progress.step += 1
                    advance(1)
                    if (
                        every
                        and (epoch * batches.per_epoch + progress.step) % every == 0
                        and progress.step < batches.per_epoch
                    ):
                        watch.check(run, epoch, batches, optimizer, train_rows)
                        progress.loss_sum = float(loss_sum)
                        if runtime.main:
                            save_checkpoint(
                                run.checkpoint, run.fingerprint, run.stage, trainer, progress, not run.tower_trainable
                            )
            watch.check(run, epoch, batches, optimizer, train_rows)
            progress.loss_sum = float(loss_sum)
            record = {
                "loss": progress.loss_sum / max(progress.seen, 1),
                **_lrs(optimizer),
                "heldout_mp5": monitor(embedder),
            }
            _log(live, record)
            progress = Progress(epoch=epoch + 1, history=[*progress.history, record])
            if runtime.main:
                save_checkpoint(run.checkpoint, run.fingerprint, run.stage, trainer, progress, not run.tower_trainable)
    last = progress.history[-1]
    return {
        "epoch": progress.epoch,
        "loss": last.get("loss", float("nan")),
        "heldout_mp5": last["heldout_mp5"],
        "compute": runtime.describe,
    }


def make_optimizer(groups: list[dict], runtime: Runtime) -> torch.optim.Optimizer:
    # fused Adam on GPUs: one kernel per step, and it takes the fp16 scaler's inf check without a sync
    return torch.optim.Adam(groups, fused=runtime.on_gpu)


def finish(runtime: Runtime, model: TrainingModel, stage: str, out: Path, run: Run) -> None:
    if runtime.main:
        torch_save(model.state(stage), out)
        run.checkpoint.unlink(missing_ok=True)  # done: a later run (say, after a code change) starts over
        if run.feature_cache is not None:
            run.feature_cache.unlink(missing_ok=True)
    barrier(runtime)
