"""Torch datasets over manifest rows; images decoded exactly as the host decodes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from guie.contract import host_decode
from guie.data.manifest import ManifestRow

Transform = Callable[[torch.Tensor], torch.Tensor]


class ManifestDataset(Dataset):
    """(image, label index) pairs: decode -> `prepare` (deterministic, cacheable) -> `transform`.

    With `cache`, prepared images are kept in memory after their first use, so later epochs
    skip decoding and resizing. Worth it only where images are revisited and the prepared set fits
    in RAM: `plan_image_cache` decides. Every DataLoader worker holds its own copy.
    `labels` maps class name -> index; without it the label is -1.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        project_root: Path,
        transform: Transform,
        labels: dict[str, int] | None = None,
        prepare: Transform | None = None,
        cache: bool = False,
    ):
        self.rows = list(rows)
        self.project_root = Path(project_root)
        self.transform = transform
        self.labels = labels
        self.prepare = prepare
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def prepared(self, i: int) -> torch.Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        image = host_decode(self.project_root / self.rows[i].path)
        if self.prepare is not None:
            image = self.prepare(image)
        if self.cache is not None:
            self.cache[i] = image
        return image

    def label(self, i: int) -> int:
        return self.labels[self.rows[i].label] if self.labels is not None else -1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.prepared(i)), self.label(i)


# Bytes a cached [3,S,S] uint8 image takes beyond its pixels (tensor object, storage, dict entry).
_CACHED_IMAGE_OVERHEAD = 400
# Share of the available memory the image caches may take: the rest is for the model, batches,
# loader queues and whatever else runs on the machine.
CACHE_MEMORY_SHARE = 0.5


def cached_image_bytes(image_size: int) -> int:
    """Memory of one prepared image in a cache: resized to image_size x image_size uint8 RGB whatever
    its size in the manifest (both resize modes output a square)."""
    return 3 * image_size * image_size + _CACHED_IMAGE_OVERHEAD


def _cgroup_free() -> int | None:
    """What a container's memory limit still allows (cgroup v2, else v1); None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = (Path("/sys/fs/cgroup") / limit_file).read_text().strip()
            usage = int((Path("/sys/fs/cgroup") / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 writes "no limit" as a huge number, v2 as "max"
            return max(0, int(limit) - usage)
    return None


def available_memory() -> int | None:
    """Bytes this machine can still give this process (Linux MemAvailable, capped by a container's
    limit; psutil elsewhere if installed); None if unknown."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            import psutil

            free = int(psutil.virtual_memory().available)
        except Exception:  # not installed, or no reading on this platform
            return None
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


@dataclass(frozen=True)
class CacheRequest:
    """A dataset that would cache its prepared images: `images` of them, held `copies` times
    (one per process and DataLoader worker)."""

    what: str
    images: int
    copies: int = 1


def plan_image_cache(
    requests: Sequence[CacheRequest], image_size: int, available: int | None, share: float = CACHE_MEMORY_SHARE
) -> tuple[list[bool], list[str]]:
    """Which of `requests` may cache (in priority order, within `share` of `available` bytes), and
    one warning per request that may not. Caching never changes results, so a cache that does
    not fit falls back to decoding each time (slower) rather than stopping a long run."""
    per_image = cached_image_bytes(image_size)
    budget = None if available is None else int(available * share)
    decisions, warnings = [], []
    for request in requests:
        need = request.images * request.copies * per_image
        fits = budget is not None and need <= budget
        decisions.append(fits)
        if fits:
            budget -= need
            continue
        copies = f" x {request.copies} copies (processes x train.num_workers)" if request.copies > 1 else ""
        room = (
            "memory available is unknown"
            if available is None
            else f"{share:.0%} of the {available / 2**30:.1f} GiB available leaves {budget / 2**30:.1f} GiB"
        )
        warnings.append(
            f"train.cache_images: not caching the {request.what}: "
            f"{request.images} images x {per_image / 1e3:.0f} KB{copies} "
            f"= {need / 2**30:.1f} GiB, and {room}; decoding them each time instead (same results, slower). "
            "Set train.cache_images: false to silence this"
            + (", or lower train.num_workers" if request.copies > 1 else "")
        )
    return decisions, warnings


def view_seeds(seed: int, epoch: int, n: int) -> tuple[list[int], list[int]]:
    """An epoch's shuffled order of `n` samples and one augmentation seed per position, both
    functions of (seed, epoch) only: a resumed run draws the same views as an uninterrupted one."""
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    )
    order = torch.randperm(n, generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    return order, seeds


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (index, view seed) of the epoch set by `set_epoch`, from batch `start` on (to resume
    mid-epoch). One object for all epochs, so a DataLoader can keep its workers.

    With `world` processes, each global batch is cut into `world` equal contiguous chunks and process
    `rank` gets chunk `rank`: gathered in rank order, the chunks are the single-process batch again."""

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split into {world} equal per-process chunks")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_epoch = n // batch_size if drop_last else -(-n // batch_size)  # batches in a whole epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        order, seeds = view_seeds(self.seed, epoch, self.n)
        pairs = list(zip(order, seeds, strict=True))
        self.epoch_batches = [pairs[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.per_epoch)]
        chunk = self.batch_size // self.world
        self.batches = [b[self.rank * chunk : (self.rank + 1) * chunk] for b in self.epoch_batches[start:]]

    def global_batch(self, step: int) -> list[int]:
        """The indices of the whole batch `step` of the current epoch, across processes."""
        return [index for index, _ in self.epoch_batches[step]]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)


class SeededViews(Dataset):
    """Item (index, seed) -> (view, label, index): the view's random augmentation is drawn from
    `seed` alone, so it does not depend on worker count, prefetching, caching or resumption."""

    def __init__(self, base: ManifestDataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = item
        prepared = self.base.prepared(index)  # outside the fork: decoding must not see the seed
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed costs ~1 ms seeding accelerators
            view, label = self.base.transform(prepared), self.base.label(index)
        return view, label, index
