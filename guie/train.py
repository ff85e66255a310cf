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
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from torch.utils.data import DataLoader

from guie.atomic import torch_save
from guie.config import Params
from guie.data.dataset import EpochBatches, ManifestDataset, SeededViews
from guie.data.manifest import ManifestRow, read_manifest
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8, TrainAugment, build_eval_preprocess
from guie.embed import embed_dataset
from guie.errors import GuieError, require_inputs
from guie.model.backbone import load_tower, tower_dim, tower_mean_std, unfreeze_from
from guie.model.embedder import Embedder
from guie.model.head import build_head
from guie.model.loss import SubCenterArcFace, dynamic_margins
from guie.progress import console as progress_console
from guie.progress import progress_bar
from guie.retrieval_task import build_task, score


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


@dataclass
class TrainingModel:
    """Everything a stage trains, and what it saves: tower, head, margin loss, class list."""

    model_name: str
    embedder: Embedder
    arcface: SubCenterArcFace
    classes: list[str]

    def state(self, stage: str) -> dict:
        return {
            "stage": stage,
            "model_name": self.model_name,
            "classes": self.classes,
            "tower": self.embedder.tower.state_dict(),
            "head": self.embedder.head.state_dict(),
            "arcface": self.arcface.state_dict(),
        }


def build_training_model(params: Params, weights: Path, classes: list[str], margins: torch.Tensor) -> TrainingModel:
    tower = load_tower(params.model.name, weights)
    mean, std = tower_mean_std(tower)
    preprocess = build_eval_preprocess(params.preprocess, mean, std)
    head = build_head(tower_dim(tower), params.model.head_dim, params.model.dropout)
    arcface = SubCenterArcFace(params.model.head_dim, margins, params.loss.subcenters, params.loss.scale)
    return TrainingModel(params.model.name, Embedder(preprocess, tower, head, None), arcface, classes)


def new_training_model(params: Params, weights: Path, train_rows: list[ManifestRow]) -> TrainingModel:
    """Stage 1's starting point: backbone weights, fresh head, margins from the class counts."""
    counts = Counter(r.label for r in train_rows)
    classes = sorted(counts)
    margins = dynamic_margins([counts[c] for c in classes], params.loss.margin_min, params.loss.margin_max, params.loss.margin_power)
    return build_training_model(params, weights, classes, margins)


def load_training_model(params: Params, checkpoint: Path, weights: Path) -> TrainingModel:
    """Rebuild the model of a stage checkpoint (architecture from params, weights from the file)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("model_name") != params.model.name:
        raise GuieError(f"{checkpoint}: trained for model {state.get('model_name')!r}, params say {params.model.name!r}; re-run training")
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
    the `evaluate` stage scores the exported model exactly."""

    def __init__(self, params: Params, heldout: list[ManifestRow], preprocess: EvalPreprocess, project_root: Path):
        self.params = params
        self.task = build_task(heldout, [], params.evaluate.queries_per_class)
        rows = self.task.queries + self.task.index
        self.dataset = ManifestDataset(rows, project_root, Normalize(preprocess), prepare=ResizeToUint8(preprocess), cache=params.train.cache_images)

    def __call__(self, embedder: Embedder) -> float:
        if not self.task.queries:
            return float("nan")
        emb = embed_dataset(embedder, self.dataset, self.params.pca.batch_size, "held-out mP@5")
        n = len(self.task.queries)
        per_query, _ = score(self.task, emb[:n], emb[n:], self.params.evaluate.k)
        return float(np.mean(list(per_query.values())))


def resume_checkpoint(project_root: Path, stage: str) -> Path:
    """Where a stage keeps its resume checkpoint: outside DVC's outs, which DVC deletes before a run."""
    return project_root / "checkpoints" / stage / "last.pt"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Knobs that change speed or memory but not a single number of the result.
_RESULT_NEUTRAL = ("num_workers", "cache_images", "checkpoint_every")


def run_fingerprint(params: Params, stage: str, inputs: list[Path]) -> str:
    """A hash of everything a stage's result depends on: a checkpoint resumes only a run with the same one."""
    train = {k: v for k, v in asdict(params.train).items() if k not in _RESULT_NEUTRAL}
    payload = {
        "stage": stage,
        "seed": params.seed,
        "preprocess": asdict(params.preprocess),
        "model": asdict(params.model),
        "loss": asdict(params.loss),
        "train": train,
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
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))


def save_checkpoint(path: Path, fingerprint: str, stage: str, model: TrainingModel, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    """Write the resume checkpoint atomically; refuse to replace a good one with non-finite weights."""
    tensors = [*model.embedder.parameters(), *model.arcface.parameters()]
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise GuieError(f"{stage}: weights became non-finite at epoch {progress.epoch + 1} step {progress.step}; {path} keeps the last good state; lower the learning rates (train.*)")
    state = {
        "fingerprint": fingerprint,
        "progress": asdict(progress),
        "model": model.state(stage),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
    }
    torch_save(state, path)


def _load_resume(path: Path, fingerprint: str, fresh: bool, stage: str, model: TrainingModel, optimizer: torch.optim.Optimizer) -> tuple[Progress, dict] | None:
    """The progress and RNG state to go on from, after loading model and optimizer; None = start fresh."""
    if not path.is_file():
        return None
    if fresh:
        progress_console.print(f"{stage}: --fresh: ignoring {path}, starting over")
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        progress_console.print(f"{stage}: {path} is from other params or inputs; starting fresh")
        return None
    model.embedder.tower.load_state_dict(state["model"]["tower"])
    model.embedder.head.load_state_dict(state["model"]["head"])
    model.arcface.load_state_dict(state["model"]["arcface"])
    optimizer.load_state_dict(state["optimizer"])
    progress = Progress(**state["progress"])
    progress_console.print(f"{stage}: resuming from {path} at epoch {progress.epoch + 1} step {progress.step}")
    return progress, state["rng"]


def _lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}


def _log(live: Live, record: dict) -> None:
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
    checkpoint: Path
    fingerprint: str
    fresh: bool


def _step(run: Run, model: TrainingModel, optimizer: torch.optim.Optimizer, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    embedder = model.embedder
    with torch.set_grad_enabled(run.tower_trainable):
        feats = embedder.tower(images)
    loss = model.arcface(embedder.head(feats), target)
    if torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.detach()


def _fit(params: Params, model: TrainingModel, optimizer: torch.optim.Optimizer, run: Run, train_rows: list[ManifestRow], heldout: list[ManifestRow], project_root: Path, metrics_dir: Path) -> dict:
    embedder = model.embedder
    labels = {c: i for i, c in enumerate(model.classes)}
    pre = embedder.preprocess
    augment = TrainAugment(pre, params.train.augment)
    dataset = SeededViews(ManifestDataset(train_rows, project_root, augment, labels, prepare=ResizeToUint8(pre), cache=params.train.cache_images))
    batch_size = params.train.batch_size
    batches = EpochBatches(len(dataset), batch_size, run.seed, drop_last=len(dataset) > batch_size)  # BatchNorm needs > 1 sample per batch
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=params.train.num_workers,
        persistent_workers=params.train.num_workers > 0,  # keeps each worker's image cache alive
        generator=torch.Generator().manual_seed(run.seed),  # leaves the global RNG (dropout's) alone
    )
    monitor = HeldoutMonitor(params, heldout, pre, project_root)
    resumed = _load_resume(run.checkpoint, run.fingerprint, run.fresh, run.stage, model, optimizer)
    every = params.train.checkpoint_every
    with Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=False) as live:
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
            with progress_bar(f"{run.stage} epoch {epoch + 1}/{run.epochs}", batches.per_epoch) as advance:
                advance(progress.step)
                for images, target, index in loader:
                    try:
                        loss = _step(run, model, optimizer, images, target)
                    except torch.OutOfMemoryError:
                        raise GuieError(
                            f"{run.stage}: out of GPU memory at batch size {batch_size}; lower train.batch_size in params.yaml"
                            + (" or raise train.finetune.unfreeze_from to train fewer blocks" if run.tower_trainable else "")
                        ) from None
                    if not torch.isfinite(loss):
                        kept = f"{run.checkpoint} (the last good state) is kept" if run.checkpoint.is_file() else "no checkpoint was written yet"
                        lrs = ", ".join(f"{k} {v:g}" for k, v in _lrs(optimizer).items())
                        paths = ", ".join(train_rows[i].path for i in index.tolist())
                        raise GuieError(
                            f"{run.stage}: loss became {loss.item()} at epoch {epoch + 1} step {progress.step + 1} ({lrs}); "
                            f"{kept}; lower the learning rates in params.yaml (train.*). The batch's images: {paths}"
                        )
                    progress.loss_sum += loss.item() * len(images)
                    progress.seen += len(images)
                    progress.step += 1
                    advance(1)
                    if every and (epoch * batches.per_epoch + progress.step) % every == 0 and progress.step < batches.per_epoch:
                        save_checkpoint(run.checkpoint, run.fingerprint, run.stage, model, optimizer, progress)
            record = {"loss": progress.loss_sum / max(progress.seen, 1), **_lrs(optimizer), "heldout_mp5": monitor(embedder)}
            _log(live, record)
            progress = Progress(epoch=epoch + 1, history=[*progress.history, record])
            save_checkpoint(run.checkpoint, run.fingerprint, run.stage, model, optimizer, progress)
    last = progress.history[-1]
    return {"epoch": progress.epoch, "loss": last.get("loss", float("nan")), "heldout_mp5": last["heldout_mp5"]}


def train_head(
    params: Params, project_root: Path, manifest: Path, weights: Path, out: Path, metrics_dir: Path, checkpoint: Path | None = None, fresh: bool = False
) -> dict:
    """Stage 1; resumes from `checkpoint` (default checkpoints/train_head/last.pt) unless `fresh`."""
    require_inputs("train_head", (manifest, "manifest"), (weights, "weights"))
    seed_everything(params.seed)
    train_rows, heldout = split_rows(read_manifest(manifest))
    model = new_training_model(params, weights, train_rows)
    for p in model.embedder.tower.parameters():
        p.requires_grad_(False)
    head_params = list(model.embedder.head.parameters()) + list(model.arcface.parameters())
    optimizer = torch.optim.Adam([{"params": head_params, "lr": params.train.head.lr, "name": "head"}])
    checkpoint = checkpoint or resume_checkpoint(project_root, "train_head")
    run = Run("train_head", params.seed, params.train.head.epochs, False, checkpoint, run_fingerprint(params, "train_head", [manifest, weights]), fresh)
    summary = _fit(params, model, optimizer, run, train_rows, heldout, project_root, metrics_dir)
    torch_save(model.state("head"), out)
    checkpoint.unlink(missing_ok=True)  # done: a later run (say, after a code change) starts over
    return summary


def train_finetune(
    params: Params,
    project_root: Path,
    manifest: Path,
    weights: Path,
    head_checkpoint: Path,
    out: Path,
    metrics_dir: Path,
    checkpoint: Path | None = None,
    fresh: bool = False,
) -> dict:
    """Stage 2; resumes from `checkpoint` (default checkpoints/train_finetune/last.pt) unless `fresh`."""
    require_inputs("train_finetune", (manifest, "manifest"), (head_checkpoint, "train_head"))
    seed_everything(params.seed + 1)
    train_rows, heldout = split_rows(read_manifest(manifest))
    model = load_training_model(params, head_checkpoint, weights)
    if model.classes != sorted({r.label for r in train_rows}):
        raise GuieError(f"{head_checkpoint}: trained on another class list than {manifest}; re-run `dvc repro train_head`")
    ft = params.train.finetune
    backbone_params = unfreeze_from(model.embedder.tower, ft.unfreeze_from)
    head_params = list(model.embedder.head.parameters()) + list(model.arcface.parameters())
    optimizer = torch.optim.Adam(
        [
            {"params": backbone_params, "lr": ft.lr_backbone, "name": "backbone"},
            {"params": head_params, "lr": ft.lr_head, "name": "head"},
        ]
    )
    checkpoint = checkpoint or resume_checkpoint(project_root, "train_finetune")
    fingerprint = run_fingerprint(params, "train_finetune", [manifest, weights, head_checkpoint])
    run = Run("train_finetune", params.seed + 1, ft.epochs, bool(backbone_params), checkpoint, fingerprint, fresh)
    summary = _fit(params, model, optimizer, run, train_rows, heldout, project_root, metrics_dir)
    torch_save(model.state("finetune"), out)
    checkpoint.unlink(missing_ok=True)
    return summary


def load_trained_embedder(params: Params, checkpoint: Path, weights: Path) -> Embedder:
    """The trained embedder (tower + head, eval mode) from a stage checkpoint."""
    return load_training_model(params, checkpoint, weights).embedder.eval()
