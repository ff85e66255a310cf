"""Time and peak memory of exact top-k search at the competition's scale, against scikit-learn.

    python benchmarks/search_topk.py [--queries 5000] [--index 200000] [--dim 64] [--k 5]

Each method runs in its own child process (one per round, rounds interleaved so background
load hits every method alike), so its peak extra memory is the child's peak RSS minus its RSS
once the data is loaded. Prints a table with ratios against scikit-learn's brute-force
NearestNeighbors, checks every method returns the same neighbours, and exits 1 when a result
disagrees or our search misses its targets (>= 1.5x faster, <= 1 GiB extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("sklearn_brute", "guie_topk", "torch_matmul")
BASELINE = "sklearn_brute"
TARGET_SPEEDUP = 1.5
TARGET_EXTRA_BYTES = 1 << 30
TORCH_CHUNK = 256  # queries per matmul: 256 x 200k float32 scores = 200 MB


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _search(method: str, queries: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if method == "guie_topk":
        from guie.retrieval import topk_euclidean

        return topk_euclidean(queries, index, k)
    if method == "sklearn_brute":
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(index).kneighbors(queries)
    if method == "torch_matmul":
        import torch

        with torch.no_grad():
            base = torch.from_numpy(index)
            base_norms = (base * base).sum(1)
            found = []
            for start in range(0, len(queries), TORCH_CHUNK):
                chunk = torch.from_numpy(queries[start : start + TORCH_CHUNK])
                # The query norm is constant per row, so it is left out of the ranking.
                scores = base_norms[None, :] - 2 * (chunk @ base.T)
                values, rows = torch.topk(scores, k, dim=1, largest=False, sorted=True)
                squared = (values + (chunk * chunk).sum(1, keepdim=True)).clamp_min(0)
                found.append((squared.sqrt().numpy(), rows.numpy()))
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_child(method: str, data_dir: Path, k: int, calls: int) -> None:
    """Search `calls` times in this process; print times and memory as one JSON line."""
    import faiss  # noqa: F401  (imported up front so library loading is not counted as search memory)
    import sklearn.neighbors  # noqa: F401
    import torch  # noqa: F401

    queries = np.load(data_dir / "queries.npy")
    index = np.load(data_dir / "index.npy")
    rss_before = _current_rss_bytes()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        distances, indices = _search(method, queries, index, k)
        seconds.append(time.perf_counter() - start)
    extra = max(0, _peak_rss_bytes() - rss_before)
    np.save(data_dir / f"{method}_indices.npy", np.asarray(indices, dtype=np.int64))
    np.save(data_dir / f"{method}_distances.npy", np.asarray(distances, dtype=np.float32))
    print(json.dumps({"method": method, "seconds": seconds, "extra_bytes": extra}))


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _exact_distances(queries: np.ndarray, index: np.ndarray, indices: np.ndarray) -> np.ndarray:
    difference = index[indices].astype(np.float64) - queries[:, None, :].astype(np.float64)
    return np.sqrt(np.einsum("qcd,qcd->qc", difference, difference))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--index", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="child processes per method, interleaved")
    parser.add_argument("--calls", type=int, default=2, help="searches per child process")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def _run_rounds(
    args: argparse.Namespace, methods: list[str], queries: np.ndarray, index: np.ndarray
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every method in its own child process, rounds interleaved: the search times, the worst extra
    memory and the (distances, indices) found, per method."""
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    extra: dict[str, int] = {m: 0 for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        np.save(data_dir / "queries.npy", queries)
        np.save(data_dir / "index.npy", index)
        for _ in range(args.rounds):
            for method in methods:
                command = [sys.executable, __file__, "--child", method, "--data-dir", str(data_dir)]
                command += ["--k", str(args.k), "--calls", str(args.calls)]
                report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                seconds[method] += report["seconds"]
                extra[method] = max(extra[method], report["extra_bytes"])
        found = {m: (np.load(data_dir / f"{m}_distances.npy"), np.load(data_dir / f"{m}_indices.npy")) for m in methods}
    return seconds, extra, found


def _print_timings(
    args: argparse.Namespace, methods: list[str], seconds: dict[str, list[float]], extra: dict[str, int]
) -> None:
    print(
        f"top-{args.k} of {args.queries} queries x {args.index} index x {args.dim}-d float32, unit rows, "
        f"seed {args.seed}"
    )
    print(f"{args.rounds} processes x {args.calls} searches per method; time = best search, memory = worst process")
    print(f"{'method':<15}{'best s':>9}{'median s':>10}{'speed-up':>10}{'extra MiB':>11}{'mem ratio':>11}")
    base_time, base_extra = min(seconds[BASELINE]), max(extra[BASELINE], 1)
    for m in methods:
        best = min(seconds[m])
        print(
            f"{m:<15}{best:>9.2f}{statistics.median(seconds[m]):>10.2f}{base_time / best:>9.2f}x"
            f"{extra[m] / 2**20:>11.0f}{extra[m] / base_extra:>10.2f}x"
        )


def _agree_with_baseline(
    methods: list[str], found: dict[str, tuple[np.ndarray, np.ndarray]], queries: np.ndarray, index: np.ndarray
) -> bool:
    """Print how each method's neighbours compare with the baseline's; whether all agree."""
    ok = True
    base_indices = found[BASELINE][1]
    base_exact = _exact_distances(queries, index, base_indices)
    for m in methods[1:]:
        distances, indices = found[m]
        exact = _exact_distances(queries, index, indices)
        same_ids = float((indices == base_indices).mean())
        # Different ids are only acceptable where the neighbours are equally far (float32 near-ties).
        gap = float(np.abs(exact - base_exact).max())
        reported = float(np.abs(distances.astype(np.float64) - exact).max())
        agree = gap < 1e-5 and reported < 1e-4
        ok &= agree
        print(
            f"{m} vs {BASELINE}: {same_ids:.4%} identical ids, max exact-distance gap {gap:.1e}, "
            f"max reported-distance error {reported:.1e} -> {'agree' if agree else 'DISAGREE'}"
        )
    return ok


def _meets_targets(seconds: dict[str, list[float]], extra: dict[str, int]) -> bool:
    """Print guie_topk's speed-up and extra memory against the targets; whether it meets both."""
    speedup = min(seconds[BASELINE]) / min(seconds["guie_topk"])
    fast, small = speedup >= TARGET_SPEEDUP, extra["guie_topk"] <= TARGET_EXTRA_BYTES
    print(
        f"guie_topk targets: speed-up {speedup:.2f}x (>= {TARGET_SPEEDUP}x) {'PASS' if fast else 'FAIL'}; "
        f"extra memory {extra['guie_topk'] / 2**20:.0f} MiB (<= 1024 MiB) {'PASS' if small else 'FAIL'}"
    )
    return fast and small


def main() -> int:
    args = _parse_args()
    if args.child:
        run_child(args.child, args.data_dir, args.k, args.calls)
        return 0
    methods = [BASELINE] + [m for m in args.methods if m != BASELINE]

    rng = np.random.default_rng(args.seed)
    queries = _unit_rows(rng, args.queries, args.dim)
    index = _unit_rows(rng, args.index, args.dim)
    seconds, extra, found = _run_rounds(args, methods, queries, index)

    _print_timings(args, methods, seconds, extra)
    ok = _agree_with_baseline(methods, found, queries, index)
    if "guie_topk" in methods:
        ok &= _meets_targets(seconds, extra)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
