"""The two training stages of the 6th-place recipe.

Stage 1 (`train_head`): the tower is frozen; BN-Dropout-Linear head and sub-center ArcFace learn.
Stage 2 (`train_finetune`): resblocks from `unfreeze_from` to the end are unfrozen and trained with
their own (much smaller) learning rate next to the head's.
Each stage writes one checkpoint and logs per-epoch loss, lr and held-out mP@5 with DVCLive.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from torch.utils.data import DataLoader

from guie.atomic import torch_save
from guie.config import Params
from guie.data.dataset import ManifestDataset
from guie.data.manifest import ManifestRow, read_manifest
from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8, TrainAugment, build_eval_preprocess
from guie.embed import embed_dataset
from guie.errors import GuieError, require_inputs
from guie.model.backbone import load_tower, tower_dim, tower_mean_std, unfreeze_from
from guie.model.embedder import Embedder
from guie.model.head import build_head
from guie.model.loss import SubCenterArcFace, dynamic_margins
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


def _fit(
    params: Params,
    model: TrainingModel,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    train_rows: list[ManifestRow],
    heldout: list[ManifestRow],
    project_root: Path,
    metrics_dir: Path,
    stage: str,
    tower_trainable: bool,
) -> dict:
    embedder, arcface = model.embedder, model.arcface
    labels = {c: i for i, c in enumerate(model.classes)}
    pre = embedder.preprocess
    dataset = ManifestDataset(train_rows, project_root, TrainAugment(pre), labels, prepare=ResizeToUint8(pre), cache=params.train.cache_images)
    monitor = HeldoutMonitor(params, heldout, pre, project_root)
    generator = torch.Generator().manual_seed(params.seed)
    loader = DataLoader(
        dataset,
        batch_size=params.train.batch_size,
        shuffle=True,
        drop_last=len(dataset) > params.train.batch_size,  # BatchNorm needs > 1 sample per batch
        num_workers=params.train.num_workers,
        persistent_workers=params.train.num_workers > 0,  # keeps each worker's image cache alive
        generator=generator,
    )
    summary: dict = {}
    with Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=False) as live:
        live.log_metric("heldout_mp5", monitor(embedder))
        live.next_step()
        for epoch in range(epochs):
            embedder.train()
            if not tower_trainable:
                embedder.tower.eval()
            total, seen = 0.0, 0
            with progress_bar(f"{stage} epoch {epoch + 1}/{epochs}", len(loader)) as advance:
                for step, (images, target) in enumerate(loader):
                    with torch.set_grad_enabled(tower_trainable):
                        feats = embedder.tower(images)
                    loss = arcface(embedder.head(feats), target)
                    if not torch.isfinite(loss):
                        raise GuieError(
                            f"{stage}: loss became {loss.item()} at epoch {epoch + 1} step {step}; "
                            "lower the learning rates in params.yaml (train.*)"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(images)
                    seen += len(images)
                    advance(1)
            mp5 = monitor(embedder)
            live.log_metric("loss", total / max(seen, 1))
            for i, group in enumerate(optimizer.param_groups):
                live.log_metric(f"lr/{group.get('name', i)}", group["lr"])
            live.log_metric("heldout_mp5", mp5)
            live.next_step()
            summary = {"epoch": epoch + 1, "loss": total / max(seen, 1), "heldout_mp5": mp5}
    return summary


def train_head(params: Params, project_root: Path, manifest: Path, weights: Path, out: Path, metrics_dir: Path) -> dict:
    require_inputs("train_head", (manifest, "manifest"), (weights, "weights"))
    seed_everything(params.seed)
    train_rows, heldout = split_rows(read_manifest(manifest))
    model = new_training_model(params, weights, train_rows)
    for p in model.embedder.tower.parameters():
        p.requires_grad_(False)
    head_params = list(model.embedder.head.parameters()) + list(model.arcface.parameters())
    optimizer = torch.optim.Adam([{"params": head_params, "lr": params.train.head.lr, "name": "head"}])
    summary = _fit(params, model, optimizer, params.train.head.epochs, train_rows, heldout, project_root, metrics_dir, "train_head", False)
    torch_save(model.state("head"), out)
    return summary


def train_finetune(params: Params, project_root: Path, manifest: Path, weights: Path, head_checkpoint: Path, out: Path, metrics_dir: Path) -> dict:
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
    summary = _fit(params, model, optimizer, ft.epochs, train_rows, heldout, project_root, metrics_dir, "train_finetune", bool(backbone_params))
    torch_save(model.state("finetune"), out)
    return summary


def load_trained_embedder(params: Params, checkpoint: Path, weights: Path) -> Embedder:
    """The trained embedder (tower + head, eval mode) from a stage checkpoint."""
    return load_training_model(params, checkpoint, weights).embedder.eval()
