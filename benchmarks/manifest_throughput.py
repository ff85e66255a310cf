"""Manifest throughput: images validated per second with N worker processes against 1 worker.

Generates one folder of 2,000 JPEGs (100 classes x 20, photo-like content, 512x512 and odd sizes
up to 800 px, as in the 130k set and GLDv2) plus a 20-image PCA folder, then runs the whole
`manifest` stage (listing, decoding as the host does, hashing, writing the tables) on the same
files with 1 worker (the baseline) and with each N. The page cache is warmed first; the settings
take turns `--repeats` times and each one's best run counts. Prints images/s, the speedup over 1 worker, the
time extrapolated to the seeds' 655k images, and the load average (other work on the machine
slows the parallel runs first) with the CPU time of the main process and of the workers.

    python benchmarks/manifest_throughput.py                    # 1 vs 2 workers
    python benchmarks/manifest_throughput.py --workers 2 4 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import guie.progress
from guie.layout import Layout
from guie.params.load import parse_params
from guie.stages.download import download_sources
from guie.stages.manifest import build_manifest

REPO = Path(__file__).resolve().parents[1]
SEEDS_IMAGES = 655_000  # the 6th-place team's training set
TARGET = 1.7  # speedup wanted with 2 workers


def photo_like(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth structure with fine grain: compresses and decodes like a photo, unlike pure noise."""
    base = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=np.float32) + grain, 0, 255).astype(np.uint8))


def make_folder(root: Path, classes: int, per_class: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            w, h = (512, 512) if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(320, 801, 2))
            photo_like(rng, w, h).save(root / f"c{c:03d}" / f"{i:02d}.jpg", quality=90)
    return classes * per_class


def params_for(images: Path, pca: Path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["sources"] = [
        {"name": "bench", "type": "folder", "path": str(images), "domain": "packaged", "max_images_per_class": 50},
        {"name": "bench_pca", "type": "folder", "path": str(pca), "domain": "packaged", "role": "pca"},
    ]
    return parse_params(raw)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def timed(params, root: Path, workers: int) -> tuple[float, int, float, float]:
    """(wall seconds, images, CPU seconds of this process, CPU seconds of the workers)."""
    cpu_self, cpu_workers = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    layout = Layout(root)
    t = time.perf_counter()
    report = build_manifest(params, layout.root, layout.raw, layout.manifest, layout.rejected, workers=workers)
    wall = time.perf_counter() - t
    return (
        wall,
        report["images"] + report["rejected"],
        _cpu(resource.RUSAGE_SELF) - cpu_self,
        _cpu(resource.RUSAGE_CHILDREN) - cpu_workers,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[2], help="worker counts to compare with 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--workdir", type=Path, help="scratch directory, reused if it holds the images (default: a temp dir)"
    )
    args = ap.parse_args()
    guie.progress.console.quiet = True  # the bars would cost time and flood the output

    root = args.workdir or Path(tempfile.mkdtemp(prefix="guie-manifest-bench-"))
    if not (root / "pca").is_dir():  # a --workdir from an earlier run is reused as it is
        t = time.perf_counter()
        n = make_folder(root / "images", 100, 20, seed=0) + make_folder(root / "pca", 1, 20, seed=1)
        print(f"generated {n} JPEGs in {root} ({time.perf_counter() - t:.1f} s)")
    params = params_for(root / "images", root / "pca")
    layout = Layout(root)
    download_sources(params, layout.root, layout.raw, layout.downloads_dir)
    timed(params, root, max(args.workers))  # warm the page cache and the imports

    print(f"cpus: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}); load average before: {os.getloadavg()}")
    settings = [1, *args.workers]
    runs: dict[int, list] = {w: [] for w in settings}
    for _ in range(args.repeats):  # interleaved, so a burst of outside load hits every setting alike
        for workers in settings:
            runs[workers].append(timed(params, root, workers))
    best: dict[int, float] = {}
    for workers in settings:
        seconds, images, cpu_main, cpu_workers = min(runs[workers])
        best[workers] = images / seconds
        print(
            f"  {workers} worker(s): {best[workers]:7.1f} images/s  "
            f"(runs: {', '.join(f'{r[0]:.2f}' for r in runs[workers])} s; "
            f"best run's CPU: main process {cpu_main:.2f} s, workers {cpu_workers:.2f} s)"
        )
    _, _, cpu_main, cpu_workers = min(runs[1])
    serial = cpu_main / (cpu_main + cpu_workers)  # the part that more workers do not speed up
    print(f"load average after: {os.getloadavg()}")
    print(
        f"CPU split of the 1-worker run: {serial:.1%} in the main process, so Amdahl's bound for 2 workers on "
        f"2 idle cores is {1 / (serial + (1 - serial) / 2):.2f}x (a derived bound, not a measurement)"
    )
    print(f"baseline: 1 worker, {best[1]:.1f} images/s -> 655k images in {SEEDS_IMAGES / best[1] / 3600:.2f} h")
    for workers in args.workers:
        speedup = best[workers] / best[1]
        verdict = f" (target >= {TARGET}x: {'met' if speedup >= TARGET else 'NOT met'})" if workers == 2 else ""
        print(
            f"{workers} workers: {speedup:.2f}x the baseline{verdict}; 655k images in "
            f"{SEEDS_IMAGES / best[workers] / 3600:.2f} h"
        )


if __name__ == "__main__":
    main()
