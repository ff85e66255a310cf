"""The prepared-image store: every image decoded the host's way and resized once (`ResizeToUint8`, the
first half of a training view), kept on disk as uint8 [3,S,S] slots of one memory-mapped file.

Every stage at that image size and resize mode, every loader worker and every process on the machine
reads the same file through the page cache (one copy in RAM, none per process), so no epoch decodes a
full-size original again. Slots are keyed by the image's sha256 (the manifest's), so a store outlives
manifest changes and stages with other rows: only images it lacks are prepared, in worker processes.

On disk, in `<root>/<size>px-<resize>/`: `pixels.u8` (slot i at byte i * 3*S*S) and `index.bin` (the
32-byte sha256 digest of slot i at byte 32 i). A batch of slots is written and flushed before its
digests are appended, so a killed build leaves at worst unindexed pixels that the next build overwrites;
a lock file serialises builders (two experiments, or the processes of one torchrun)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from guie.contract import host_decode
from guie.data.image_check import die_with_parent
from guie.data.manifest import ManifestRow
from guie.data.transforms import EvalPreprocess, ResizeToUint8, cpu_copy
from guie.errors import GuieError
from guie.progress import console, progress_bar

DIGEST_BYTES = 32
_CHUNK = 64  # images prepared, written and indexed together


def store_dir(root: Path, preprocess: EvalPreprocess) -> Path:
    """The store of one geometry: views of different sizes or resize modes never share slots."""
    return root / f"{preprocess.image_size}px-{'shortest_side_crop' if preprocess.crop else 'squash'}"


_worker_prepare: ResizeToUint8 | None = None


def _init_worker(parent: int, preprocess: EvalPreprocess) -> None:
    global _worker_prepare
    die_with_parent(parent)
    torch.set_num_threads(1)  # one image per worker process: the processes are the parallelism
    _worker_prepare = ResizeToUint8(preprocess)


def _prepare(path: str) -> bytes:
    return _worker_prepare(host_decode(path)).numpy().tobytes()


class PreparedStore:
    """uint8 [3,S,S] views by image sha256, prepared once (`ensure`) and memory-mapped (`view`)."""

    def __init__(self, root: Path, preprocess: EvalPreprocess):
        self.dir = store_dir(root, preprocess)
        self.preprocess = preprocess
        size = preprocess.image_size
        self.shape = (3, size, size)
        self.slot_bytes = 3 * size * size
        self._slots: dict[str, int] | None = None
        self._pixels: np.memmap | None = None

    @property
    def pixels_path(self) -> Path:
        return self.dir / "pixels.u8"

    @property
    def index_path(self) -> Path:
        return self.dir / "index.bin"

    def _read_index(self) -> dict[str, int]:
        """sha256 hex -> slot, of the slots whose digests were appended whole (a torn tail is ignored)."""
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return {}
        n = len(raw) // DIGEST_BYTES
        pixels = self.pixels_path.stat().st_size // self.slot_bytes if self.pixels_path.exists() else 0
        if pixels < n:
            raise GuieError(
                f"{self.dir}: index.bin lists {n} images but pixels.u8 holds {pixels}; "
                f"delete {self.dir} (a cache: it is rebuilt from the images)"
            )
        return {raw[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES].hex(): i for i in range(n)}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def ensure(self, rows: Sequence[ManifestRow], project_root: Path, workers: int | None = None) -> None:
        """Prepare every image of `rows` the store lacks, in `workers` processes (default: every core),
        with a progress bar; print the store's size. Resumes a build that was killed."""
        with self._locked():
            slots = self._read_index()
            missing, seen = [], set(slots)
            for row in rows:
                if row.sha256 not in seen:
                    seen.add(row.sha256)
                    missing.append(row)
            if missing:
                self._build(missing, project_root, len(slots), workers or len(os.sched_getaffinity(0)))
                slots = self._read_index()
        self._slots, self._pixels = slots, None
        size = self.pixels_path.stat().st_size if self.pixels_path.exists() else 0
        console.print(
            f"prepared-image store {self.dir}: {len(slots)} images, {size / 2**20:,.1f} MiB"
            + (f" ({len(missing)} prepared now)" if missing else ""),
            markup=False,
            highlight=False,
        )

    def _build(self, rows: list[ManifestRow], project_root: Path, first_slot: int, workers: int) -> None:
        paths = [str(project_root / r.path) for r in rows]
        fd = os.open(self.pixels_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with (
                ProcessPoolExecutor(
                    workers, initializer=_init_worker, initargs=(os.getpid(), cpu_copy(self.preprocess))
                ) as pool,
                open(self.index_path, "ab") as index,
            ):
                index.truncate(first_slot * DIGEST_BYTES)  # drop a torn digest left by a kill
                results = pool.map(_prepare, paths, chunksize=max(1, min(16, len(paths) // (workers * 4))))
                with progress_bar(f"preparing {self.shape[1]} px views", len(paths)) as advance:
                    for start in range(0, len(rows), _CHUNK):
                        chunk = rows[start : start + _CHUNK]
                        data = b"".join(next(results) for _ in chunk)
                        os.pwrite(fd, data, (first_slot + start) * self.slot_bytes)
                        os.fsync(fd)  # pixels on disk before the index names them
                        index.write(b"".join(bytes.fromhex(r.sha256) for r in chunk))
                        index.flush()
                        advance(len(chunk))
        finally:
            os.close(fd)

    def view(self, sha256: str) -> torch.Tensor:
        """The prepared uint8 [3,S,S] view of an image `ensure` was given (a copy: the map stays read-only)."""
        if self._slots is None:
            self._slots = self._read_index()
        slot = self._slots.get(sha256)
        if slot is None:
            raise GuieError(f"{self.dir}: no prepared view of image {sha256[:12]}… (the store was not built for it)")
        if self._pixels is None:  # mapped lazily: each DataLoader worker maps the file itself
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r")
        offset = slot * self.slot_bytes
        return torch.from_numpy(self._pixels[offset : offset + self.slot_bytes].reshape(self.shape).copy())

    def __getstate__(self) -> dict:
        # to loader workers without the map (each maps the file itself)
        return self.__dict__ | {"_pixels": None}
