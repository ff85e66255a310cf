"""Resuming a killed run: the run's fingerprint, where it was (`ResumePoint`), and the resume
checkpoint (model, optimizer, resume point, RNG states) that reproduces the uninterrupted run exactly."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from guie.atomic import torch_save
from guie.errors import GuieError
from guie.progress import console as progress_console
from guie.runtime import Runtime
from guie.torch_file import DamagedFile, read_torch
from guie.training.optimisation import Optimisation
from guie.training.rng import rng_state

if TYPE_CHECKING:
    from guie.params.load import Params


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_fingerprint(params: Params, stage: str, inputs: list[Path], runtime: Runtime, run: object = None) -> str:
    """A hash of everything a stage's result depends on: a checkpoint resumes only a run with the same one.
    A stage reads its own entry of train.stages, never another's. `run`: which of a soup's runs."""
    train = params.train
    # device and precision enter as what they resolved to on this machine ("compute"); run knobs never
    payload = {
        "stage": stage,
        "seed": params.seed,
        "preprocess": asdict(params.preprocess),
        "model": asdict(params.model),
        "train": {
            "batch_size": train.batch_size,
            "augment": asdict(train.augment),
            "entry": asdict(train.stages[stage]),
        },
        "compute": [runtime.device.type, str(runtime.amp_dtype)],  # what "auto" resolved to on this machine
        "evaluate": [params.evaluate.k, params.evaluate.queries_per_class],
        "inputs": [_sha256(p) for p in inputs],
    }
    if run is not None:
        payload["run"] = run
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ResumePoint:
    """Where a run is; saved in checkpoints (as "progress")."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # the current epoch's summed per-image loss so far
    seen: int = 0
    history: list[dict] = field(default_factory=list)  # every DVCLive step logged so far, replayed on resume


def save_checkpoint(
    path: Path, fingerprint: str, stage: str, optimisation: Optimisation, point: ResumePoint, frozen_tower: bool
) -> None:
    """Write the resume checkpoint atomically; refuse to replace a good one with non-finite weights.
    A frozen tower is left out: it is the weights file's, and ViT-H's would add 2.5 GB per write."""
    model = optimisation.model
    # only what the optimizer trains: frozen weights cannot diverge
    trained = [p for group in optimisation.optimizer.param_groups for p in group["params"]]
    if not all(bool(torch.isfinite(t).all()) for t in trained):
        raise GuieError(
            f"{stage}: weights became non-finite at epoch {point.epoch + 1} step {point.step}; "
            f"{path} keeps the last good state; lower the learning rates (train.*)"
        )
    state = {
        "fingerprint": fingerprint,
        "progress": asdict(point),
        "model": model.state(stage, with_tower=not frozen_tower),
        "optimizer": optimisation.optimizer.state_dict(),
        "scaler": optimisation.scaler.state_dict(),
        "rng": rng_state(),
    }
    torch_save(state, path)


def load_resume(
    path: Path, fingerprint: str, fresh: bool, stage: str, optimisation: Optimisation, runtime: Runtime
) -> tuple[ResumePoint, dict] | None:
    """The resume point and RNG state to go on from, after loading model and optimizer; None = start fresh."""
    say = progress_console.print if runtime.main else (lambda *_: None)
    if not path.is_file():
        return None
    if fresh:
        say(f"{stage}: --fresh: ignoring {path}, starting over")
        return None
    try:
        state = read_torch(path, "", keys=("fingerprint",), device=runtime.device)
    except DamagedFile as err:  # a kill mid-copy, a disk error: resuming is an optimisation, never a must
        say(f"{stage}: {path} is {err.why}; ignoring it, starting fresh")
        return None
    if state.get("fingerprint") != fingerprint:
        say(f"{stage}: {path} is from other params or inputs; starting fresh")
        return None
    model = optimisation.model
    if "tower" in state["model"]:
        model.embedder.tower.load_state_dict(state["model"]["tower"])
    model.embedder.head.load_state_dict(state["model"]["head"])
    model.margin.load_state_dict(state["model"]["margin"])
    optimisation.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        optimisation.scaler.load_state_dict(state["scaler"])
    point = ResumePoint(**state["progress"])
    say(f"{stage}: resuming from {path} at epoch {point.epoch + 1} step {point.step}")
    rng = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state["rng"].items()}
    return point, rng
