"""Resuming a killed run: the run's fingerprint, where it was (`ResumePoint`), and the resume
checkpoint (model, optimizer, resume point, RNG states) that reproduces the uninterrupted run exactly."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from guie.errors import GuieError
from guie.progress import console as progress_console
from guie.runtime import Runtime
from guie.streamed_save import save_streamed
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
    """Write the resume checkpoint atomically, in the background from a CPU snapshot (see
    `checkpoints_written`); refuse to replace a good one with non-finite weights.
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
    _WRITER.write(_snapshot(state), path)


@contextmanager
def checkpoints_written() -> Iterator[None]:
    """A block after which the resume checkpoint being written in the background is on disk, however
    the block ends (what stopped the write, say a full disk, is raised)."""
    try:
        yield
    finally:
        _WRITER.wait()


def _snapshot(value: object) -> object:
    """A CPU copy of a checkpoint's tensors and containers: training goes on changing the originals."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_snapshot(v) for v in value)
    return value


class _BackgroundWriter:
    """Writes one checkpoint at a time in a thread, atomically (a temp file renamed over the old one:
    a kill mid-write leaves the previous checkpoint), so the main process does not hold the others
    at their next collective while it writes gigabytes; a write waits for the one before it."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict, path: Path) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(state, path), name="checkpoint-writer")
        self._thread.start()

    def _run(self, state: dict, path: Path) -> None:
        try:
            save_streamed(state, path)
        except BaseException as err:  # noqa: BLE001 - raised in the training thread, by `wait`
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


_WRITER = _BackgroundWriter()  # one per process: only the main process writes checkpoints


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
