"""Where training computes: device, mixed precision and, under torchrun, the process group (DDP).

Every process takes one contiguous chunk of each global batch; the processes swap tower features
(`gather_batch`) so head, BatchNorm and loss see the whole global batch, as a single process would.
That is why BatchNorm needs no SyncBatchNorm (which has no CPU/gloo implementation) and why a
2-process run matches a 1-process run on the same global batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from guie.errors import GuieError

if TYPE_CHECKING:
    from guie.params.train import TrainParams


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = float32 throughout
    channels_last: bool
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """The process that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def describe(self) -> str:
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return f"{self.device.type} {precision}" + (f" x{self.world} processes" if self.world > 1 else "")

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        # non_blocking: with pinned host memory the copy overlaps compute instead of syncing
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def resolve_device(setting: str, knob: str, local_rank: int = 0) -> torch.device:
    """`auto` | `cpu` | `cuda` (the params key `knob`) -> this process's device."""
    want = setting if setting != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GuieError(f"{knob} is cuda but no GPU is visible; set {knob}: auto or cpu in params.yaml")
    if local_rank >= torch.cuda.device_count():
        raise GuieError(
            f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); lower train.processes"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise GuieError("train.precision: fp16 needs a GPU (CPU autocast runs bf16); use bf16 or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextmanager
def training_runtime(train: TrainParams) -> Iterator[Runtime]:
    """The runtime of this process; joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if train.batch_size % world:
        raise GuieError(
            f"train.batch_size {train.batch_size} must be a multiple of the {world} processes (it is the global batch)"
        )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts
    device = resolve_device(train.device, "train.device", local_rank)
    runtime = Runtime(
        device, _amp_dtype(train.precision, device), train.channels_last and device.type == "cuda", rank, world
    )
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if runtime.on_gpu else "gloo", device_id=device if runtime.on_gpu else None)
    try:
        yield runtime
    finally:
        if joined:
            dist.destroy_process_group()


def gather_batch(runtime: Runtime, x: torch.Tensor) -> torch.Tensor:
    """Every process's equal-sized chunk, concatenated in rank order; gradients flow back to each chunk."""
    if runtime.world == 1:
        return x
    if not x.requires_grad:
        parts = [torch.empty_like(x) for _ in range(runtime.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)
    return torch.cat(dist_fn.all_gather(x))


def gather_shards(runtime: Runtime, shard: torch.Tensor, n: int) -> torch.Tensor:
    """Rows 0..n-1 on every process, when process r computed rows r, r + world, ... (`shard`)."""
    if runtime.world == 1:
        return shard
    per = -(-n // runtime.world)
    padded = shard.new_zeros((per, *shard.shape[1:]))
    padded[: len(shard)] = shard
    parts = [torch.empty_like(padded) for _ in range(runtime.world)]
    dist.all_gather(parts, padded)
    out = shard.new_empty((n, *shard.shape[1:]))
    for r, part in enumerate(parts):
        out[r :: runtime.world] = part[: len(range(r, n, runtime.world))]
    return out


def barrier(runtime: Runtime) -> None:
    if runtime.world > 1:
        dist.barrier()


def launch_processes(train: TrainParams, argv: list[str]) -> int | None:
    """With train.processes > 1 and not yet under torchrun: run this same command under torchrun,
    one process per GPU (or CPU process with gloo), and return its exit code. None = run here."""
    if train.processes == 1 or "LOCAL_RANK" in os.environ:
        return None
    if train.device != "cpu" and torch.cuda.is_available() and train.processes > torch.cuda.device_count():
        raise GuieError(f"train.processes is {train.processes} but only {torch.cuda.device_count()} GPUs are visible")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={train.processes}",
        "-m",
        "guie",
        *argv,
    ]
    return subprocess.call(cmd)
