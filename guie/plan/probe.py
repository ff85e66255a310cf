"""What the plan measures on this machine, in a few seconds: the training loader's per-core
throughput on a sample of the manifest's own images (the real code path: host decode, the prepared
store's resize, the seeded per-image and batched augmentations), the CPU's matmul rate with the
threads every stage computes with, and how long a stage's interpreter takes to start."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from guie.threads import NUMERICS_THREADS, numerics_threads

BATCH = 32  # views per collated batch when timing the loader


@dataclass(frozen=True)
class Measured:
    """What the plan measured on this machine."""

    rates: dict[int, LoaderRates]  # the loader's, by image size
    startup_s: float  # a computing stage's interpreter importing guie's train stage (torch, open_clip, DVCLive)
    light_startup_s: float  # one that needs none of them (download, manifest, verify's parent)
    generate_s: float | None = None  # generating the synthetic sources (None: there are others)


@dataclass(frozen=True)
class LoaderRates:
    """Images/s per CPU core (one process, one torch thread) at one geometry."""

    prepare: float  # host decode + resize to uint8: the store's build, and every embedding stage's loader
    views_store: float  # a training view from the prepared store (train.prepared_store: true)
    views_decode: float  # a training view decoding the original (train.prepared_store: false)
    source: str  # which images were timed


TRIALS = 3  # a probe's rate is its best trial's: other processes on a shared machine only ever slow one


def _rate(fn: Callable[[int], None], n: int, seconds: float) -> float:
    """Items/s of `fn(n)` (n items a call), the best of TRIALS windows of `seconds` / TRIALS each."""
    fn(min(n, 2))  # warm-up: codecs, allocator
    best = 0.0
    for _ in range(TRIALS):
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds / TRIALS:
            fn(n)
            done += n
        best = max(best, done / (time.perf_counter() - start))
    return best


def photo_like(path: Path, width: int, height: int, seed: int) -> None:
    """A JPEG (quality 90) with a photo's mix of smooth shading, hard edges and noise (used when there
    is no manifest to sample, and by benchmarks/loader_throughput.py)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 64 + 2, width // 64 + 2, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(12):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, height / 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def loader_rates(
    paths: list[Path], image_size: int, resize: str, augment, seconds: float = 0.4, source: str = ""
) -> LoaderRates:
    """Time the training loader's work on `paths` at one geometry, on one thread."""
    import hashlib

    from guie.data.augment import BatchAugment
    from guie.data.dataset import ManifestDataset
    from guie.data.manifest import ManifestRow
    from guie.data.prepared import PreparedStore
    from guie.data.transforms import EvalPreprocess, Normalize, ResizeToUint8
    from guie.data.views import SeededViews
    from guie.progress import console

    pre = EvalPreprocess(image_size, resize, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    rows = [
        ManifestRow(str(p), hashlib.sha256(str(p).encode()).hexdigest(), "s", "d", "c", "train", 0, 0) for p in paths
    ]
    seeds = [int(s) for s in np.random.default_rng(0).integers(0, 2**62, len(rows))]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's one thread
    try:
        resize_to = ResizeToUint8(pre)
        from guie.contract import host_decode

        prepare = _rate(lambda n: [resize_to(host_decode(p)) for p in paths[:n]], len(paths), seconds)

        def views_rate(store) -> float:
            base = ManifestDataset(rows, Path("/"), Normalize(pre), prepare=resize_to, store=store)
            views = SeededViews(base, augment, BatchAugment(pre), on_device=False)
            items = [(i % len(rows), seeds[i % len(rows)]) for i in range(BATCH)]

            def run(n: int) -> None:
                views.collate([views[item] for item in items[:n]])

            return _rate(run, BATCH if store is not None else len(rows), seconds)

        with tempfile.TemporaryDirectory() as tmp, console.capture():
            store = PreparedStore(Path(tmp), pre)
            store.ensure(rows, Path("/"), workers=1)
            from_store = views_rate(store)
        decoding = views_rate(None)
    finally:
        torch.set_num_threads(before)
    return LoaderRates(prepare, from_store, decoding, source)


def sample_paths(
    root: Path, sample: list[str], folder: Path, synthetic: list[Path] | None = None
) -> tuple[list[Path], str]:
    """The manifest's sampled training images that exist, else the `synthetic` sources' generated
    ones, else 8 generated 1024x768 photo-like JPEGs in `folder`."""
    found = [(root / p).resolve() for p in sample if (root / p).is_file()]
    if found:
        return found, f"{len(found)} of the manifest's training images"
    if synthetic:
        return synthetic, f"{len(synthetic)} images of the synthetic sources, generated here (no manifest yet)"
    made = []
    for i in range(8):
        made.append(folder / f"photo{i}.jpg")
        photo_like(made[-1], 1024, 768, i)
    return made, "8 generated 1024x768 photo-like JPEGs (no manifest images here)"


@dataclass(frozen=True)
class CpuProbe:
    flops: float  # FLOP/s of one of the tower's resblocks, forward, on NUMERICS_THREADS threads
    ram_bytes: float
    cores: int
    batch: int  # images per timed call


PROBE_FLOPS = 2e9  # per timed call: a tiny tower's whole batch, a few images of a large one


def block_flops(name: str, image_size: int, patch_stride: int, batch: int, seconds: float = 0.4) -> tuple[float, int]:
    """(FLOP/s, images per call) of the tower's first resblock, built on the CPU with random weights,
    forward on `batch` images (fewer where that would pass PROBE_FLOPS), on the stages' threads."""
    from guie.plan.flops import _blocks, skeleton, tower_cost

    cost = tower_cost(name, image_size, patch_stride)
    block = _blocks(skeleton(name, image_size, patch_stride))[0].to_empty(device="cpu")
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.02)  # small normal weights: no denormals or NaNs to slow the maths
    batch = max(1, min(batch, int(PROBE_FLOPS // max(1, cost.block_flops[0]))))
    x = torch.randn(batch, cost.tokens, cost.width)
    with numerics_threads(), torch.no_grad():
        calls = _rate(lambda n: [block(x) for _ in range(n)], 1, seconds)
    return calls * batch * cost.block_flops[0], batch


def startup_seconds(imports: str = "torch, open_clip") -> float:
    """A fresh interpreter importing `imports` (each stage is one; guie's command line alone imports little)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {imports}"], check=True, capture_output=True)
    return time.perf_counter() - start


def generate_seconds(sources: list, folder: Path) -> tuple[float, list[Path]]:
    """(Seconds `guie download` takes to generate synthetic `sources`, the images made): one instance
    of each generated into `folder` and timed (its object and every view, through the generator
    itself), times their instances."""
    import dataclasses

    from guie.data.synthetic import generate_synthetic

    total, made = 0.0, []
    for i, source in enumerate(sources):
        one = dataclasses.replace(source, domains=source.domains[:1], instances_per_domain=1)
        start = time.perf_counter()
        generate_synthetic(one, folder / str(i))
        total += (time.perf_counter() - start) * len(source.domains) * source.instances_per_domain
        made += sorted((folder / str(i)).rglob("*.jpg"))
    return total, made


def cpu_probe(name: str, image_size: int, patch_stride: int, batch: int) -> CpuProbe:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    flops, batch = block_flops(name, image_size, patch_stride, batch)
    return CpuProbe(flops, ram, len(os.sched_getaffinity(0)), batch)


THREADS_NOTE = f"{NUMERICS_THREADS} threads (every stage's fixed numerics thread count)"
