"""The training loop of every stage: the loss of a global batch, the epochs (with checkpoints and
the NaN watch), the per-epoch DVCLive metrics, and the stage's final checkpoint.

A killed run picks up from the resume checkpoint and reproduces the uninterrupted run exactly."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from dvclive import Live
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from guie.atomic import torch_save
from guie.data.dataset import EpochBatches
from guie.errors import GuieError
from guie.progress import progress_bar
from guie.runtime import Runtime, barrier, gather_batch
from guie.training.loader import epoch_batches, epoch_loader, prepared_store, training_views
from guie.training.model import TrainingModel
from guie.training.monitor import HeldoutMonitor, ImageSource
from guie.training.nonfinite import NonFiniteWatch
from guie.training.optimisation import LrSchedule, Optimisation, learning_rates
from guie.training.resume import ResumePoint, checkpoints_written, load_resume, save_checkpoint
from guie.training.rng import set_rng_state
from guie.training.spec import RunSpec

if TYPE_CHECKING:
    from guie.params.load import Params


class BatchLoss(nn.Module):
    """(images or cached tower features, labels) -> margin loss of the global batch.

    Under torchrun the processes swap tower features, so head, BatchNorm and loss see the whole
    global batch on every process; DDP then averages the tower's gradients."""

    def __init__(self, model: TrainingModel, runtime: Runtime, tower_trains: bool, cached: bool):
        super().__init__()
        self.tower = None if cached else model.embedder.tower
        self.head, self.margin = model.embedder.head, model.margin
        self.runtime, self.tower_trains = runtime, tower_trains

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.tower is not None:
            with torch.set_grad_enabled(self.tower_trains):
                x = self.tower(x)
        feats, target = gather_batch(self.runtime, x.float()), gather_batch(self.runtime, target)
        return self.margin(self.head(feats), target)


def _batch_loss(model: TrainingModel, spec: RunSpec, runtime: Runtime) -> nn.Module:
    """`BatchLoss`, wrapped in DDP under torchrun."""
    step_module = BatchLoss(model, runtime, spec.tower_trains, bool(spec.cached_views))
    if runtime.world > 1:
        return DistributedDataParallel(
            step_module, device_ids=[runtime.device] if runtime.on_gpu else None, broadcast_buffers=False
        )
    return step_module


def _out_of_memory(spec: RunSpec, params: Params, runtime: Runtime) -> GuieError:
    return GuieError(
        f"{spec.stage}: out of GPU memory at train.batch_size {params.train.batch_size} ({runtime.describe}); "
        "lower train.batch_size, "
        "set train.precision to bf16 (or fp16 on GPUs without bf16)"
        + (f", or raise train.stages.{spec.stage}.unfreeze_from to train fewer blocks" if spec.tower_trains else "")
    )


def _log(live: Live | None, record: dict) -> None:
    if live is None:
        return
    for key, value in record.items():
        live.log_metric(key, value)
    live.next_step()


@dataclass(frozen=True, kw_only=True)
class _Epochs:
    """One run's epochs: what every step and every epoch end uses."""

    params: Params
    optimisation: Optimisation
    spec: RunSpec
    runtime: Runtime
    batches: EpochBatches
    loader: DataLoader
    batch_loss: nn.Module
    monitor: HeldoutMonitor
    live: Live | None

    def start(self, resumed: tuple[ResumePoint, dict] | None) -> ResumePoint:
        """The point to train from (after the untrained model's held-out mP@5, or the resumed RNG
        states); the metrics logged so far are logged again."""
        if resumed is None:
            point = ResumePoint(history=[{"heldout_mp5": self.monitor(self.optimisation.model.embedder)}])
        else:
            point, rng = resumed
            set_rng_state(rng)
        for record in point.history:
            _log(self.live, record)
        return point

    def epoch(self, epoch: int, point: ResumePoint) -> ResumePoint:
        """Train epoch `epoch` from `point`, log its metrics and checkpoint; the point after it."""
        embedder, runtime, spec = self.optimisation.model.embedder, self.runtime, self.spec
        embedder.train()
        if not spec.tower_trains:
            embedder.tower.eval()
        if not spec.head_trains:  # a frozen head keeps its BatchNorm statistics too, and drops nothing
            embedder.head.eval()
        self.batches.set_epoch(epoch, start=point.step)
        if spec.cached_views:
            self.loader.dataset.set_epoch(epoch)  # CachedViews: this epoch's view of each image
        watch = NonFiniteWatch(runtime.device)
        # summed on the device: no sync
        loss_sum = torch.tensor(point.loss_sum, dtype=torch.float64, device=runtime.device)
        with progress_bar(
            f"{spec.stage} epoch {epoch + 1}/{spec.epochs}", self.batches.per_epoch, enabled=runtime.main
        ) as advance:
            advance(point.step)
            for batch in self.loader:
                x, target = self.loader.dataset.inputs(batch, runtime), runtime.to_device(batch[1])
                n = len(target) * runtime.world
                loss = self._update(x, target, epoch, point.step, watch)
                loss_sum += loss.detach().double() * n
                point.seen += n
                point.step += 1
                advance(1)
                if self._checkpoint_due(epoch, point.step):
                    self._check(watch, epoch)
                    point.loss_sum = float(loss_sum)
                    self._save(point)
        self._check(watch, epoch)
        point.loss_sum = float(loss_sum)
        record = {
            "loss": point.loss_sum / max(point.seen, 1),
            **learning_rates(self.optimisation.optimizer),
            "heldout_mp5": self.monitor(embedder),
        }
        _log(self.live, record)
        point = ResumePoint(epoch=epoch + 1, history=[*point.history, record])
        self._save(point)
        return point

    def _update(
        self, x: torch.Tensor, target: torch.Tensor, epoch: int, step: int, watch: NonFiniteWatch
    ) -> torch.Tensor:
        """One optimizer step on a batch; its loss."""
        runtime, optimizer, scaler = self.runtime, self.optimisation.optimizer, self.optimisation.scaler
        # a CPU "sync" is free: stop before a bad update
        check_every = self.params.train.sync_every if runtime.on_gpu else 1
        try:
            self.optimisation.set_step(epoch * self.batches.per_epoch + step)
            with runtime.autocast():
                loss = self.batch_loss(x, target)
            watch.observe(loss, step)
            if (step + 1) % check_every == 0:
                self._check(watch, epoch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        except torch.OutOfMemoryError:
            raise _out_of_memory(self.spec, self.params, runtime) from None
        return loss

    def _checkpoint_due(self, epoch: int, step: int) -> bool:
        """Whether a mid-epoch checkpoint is due after `step` batches of `epoch` (the epoch's end has its own)."""
        every, per_epoch = self.params.train.checkpoint_every, self.batches.per_epoch
        return bool(every) and (epoch * per_epoch + step) % every == 0 and step < per_epoch

    def _check(self, watch: NonFiniteWatch, epoch: int) -> None:
        watch.check(self.spec, epoch, self.batches, self.optimisation.optimizer)

    def _save(self, point: ResumePoint) -> None:
        if self.runtime.main:
            spec = self.spec
            save_checkpoint(
                spec.checkpoint, spec.fingerprint, spec.stage, self.optimisation, point, not spec.tower_trains
            )


def fit(params: Params, optimisation: Optimisation, spec: RunSpec, runtime: Runtime) -> dict:
    """Train the run's epochs, from its resume checkpoint if it has a matching one; its summary."""
    model = optimisation.model
    store = prepared_store(params, model, spec)
    views = training_views(params, model, spec, store, runtime)
    batches = epoch_batches(spec, len(views), params.train.batch_size, runtime)
    optimisation.schedule = LrSchedule(spec.schedule, spec.warmup_steps, spec.epochs * batches.per_epoch)
    resumed = load_resume(spec.checkpoint, spec.fingerprint, spec.fresh, spec.stage, optimisation, runtime)
    loader = epoch_loader(params, spec, model.embedder.tower, views, batches, runtime)
    batch_loss = _batch_loss(model, spec, runtime)
    images = ImageSource(root=spec.project_root, preprocess=model.embedder.preprocess, store=store)
    monitor = HeldoutMonitor(params, spec.heldout, images, runtime, frozen_tower=not spec.tower_trains)
    live_context = Live(dir=str(spec.metrics_dir), save_dvc_exp=False, dvcyaml=False) if runtime.main else nullcontext()
    # however the run ends, its last checkpoint (written in the background) is on disk after this block
    with live_context as live, checkpoints_written():
        epochs = _Epochs(
            params=params,
            optimisation=optimisation,
            spec=spec,
            runtime=runtime,
            batches=batches,
            loader=loader,
            batch_loss=batch_loss,
            monitor=monitor,
            live=live,
        )
        point = epochs.start(resumed)
        for epoch in range(point.epoch, spec.epochs):
            point = epochs.epoch(epoch, point)
    last = point.history[-1]
    return {
        "epoch": point.epoch,
        "loss": last.get("loss", float("nan")),
        "heldout_mp5": last["heldout_mp5"],
        "compute": runtime.describe,
    }


def finish(runtime: Runtime, model: TrainingModel, spec: RunSpec, extra: dict | None = None) -> None:
    """Write the run's model to `spec.out` (with `extra` entries) and drop the run's resume state."""
    if runtime.main:
        torch_save(model.state(spec.stage) | (extra or {}), spec.out)
        spec.checkpoint.unlink(missing_ok=True)  # done: a later run (say, after a code change) starts over
        if spec.feature_cache is not None:
            spec.feature_cache.unlink(missing_ok=True)
    barrier(runtime)
