"""Exact Euclidean top-k search, ranked the way the host ranks the index (by Euclidean distance).

faiss's brute-force kernel (the one behind IndexFlatL2, without copying the index) finds a
shortlist a little longer than k; the shortlist is then re-ranked with distances recomputed in
float64 and ties broken by the smaller index. That makes the order independent of BLAS rounding,
chunking and thread count: two identical index rows always come back smaller index first.

Parallelism is over query chunks, one single-threaded faiss call per worker thread: faiss's own
OpenMP threading syncs once per 1,024 index rows, and on a busy machine its spinning threads made
the search 4x slower than one thread (benchmarks/search_topk.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import faiss
import numpy as np

SHORTLIST_MARGIN = 16  # extra candidates per query, so float32 rounding cannot push a true top-k row out
DEFAULT_CHUNK_SIZE = 4096  # most queries per faiss call; faiss blocks the index itself (~16 MB per call)
RERANK_ROWS = 512  # queries re-ranked at once: 512 x (k + 16) x D float64 stays a few MB


def _check_matrix(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
        shape = getattr(array, "shape", None)
        dtype = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{name} must be a 2-D float32 numpy array, got shape {shape} and dtype {dtype}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name} row {row} contains NaN or infinite values; check the embeddings that produced it")


def topk_euclidean(
    queries: np.ndarray,
    index: np.ndarray,
    k: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest index rows of each query row by Euclidean distance.

    queries: float32 [Q, D]; index: float32 [N, D]; 1 <= k <= N.
    Returns (distances, indices), both [Q, k]: Euclidean (not squared) distances as float32 and
    int64 row numbers into `index`, nearest first, equal distances smaller row first.
    chunk_size caps the queries per faiss call; n_threads defaults to the CPUs this process may use.
    """
    _check_matrix("queries", queries)
    _check_matrix("index", index)
    if queries.shape[1] != index.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions but the index has {index.shape[1]}; "
            "embed both with the same model"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= index.shape[0]:
        raise ValueError(f"k must be an integer between 1 and the index size {index.shape[0]}, got {k!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    n_threads = len(os.sched_getaffinity(0)) if n_threads is None else n_threads
    if n_threads < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads}")

    if queries.shape[0] == 0:
        return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
    queries = np.ascontiguousarray(queries)
    index = np.ascontiguousarray(index)
    shortlist = min(index.shape[0], k + SHORTLIST_MARGIN)
    distances = np.empty((queries.shape[0], k), dtype=np.float32)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    # Equal chunks rather than a short last one, and none below the size where faiss switches to
    # its BLAS kernel (~4x faster per query here) unless the queries are too few for that.
    blas_rows = faiss.cvar.distance_compute_blas_threshold // queries.shape[1] + 1
    n_chunks = max(-(-queries.shape[0] // chunk_size), min(n_threads, max(1, queries.shape[0] // blas_rows)))
    bounds = np.linspace(0, queries.shape[0], n_chunks + 1).round().astype(int)

    def search(start: int, stop: int) -> None:
        # OpenMP's thread count is per calling thread: this leaves the caller's setting alone.
        faiss.omp_set_num_threads(1)
        _, candidates = faiss.knn(queries[start:stop], index, shortlist)
        for sub in range(start, stop, RERANK_ROWS):
            rows = slice(sub, min(sub + RERANK_ROWS, stop))
            mine = candidates[rows.start - start : rows.stop - start]
            exact = _squared_distances_float64(queries[rows], index, mine)
            # lexsort's last key is the primary one: distance, then row number.
            order = np.lexsort((mine, exact), axis=1)[:, :k]
            distances[rows] = np.sqrt(np.take_along_axis(exact, order, axis=1))
            indices[rows] = np.take_along_axis(mine, order, axis=1)

    with ThreadPoolExecutor(max_workers=min(n_threads, n_chunks)) as pool:
        for done in [pool.submit(search, start, stop) for start, stop in pairwise(bounds)]:
            done.result()  # re-raises a worker's error here
    return distances, indices


def _squared_distances_float64(queries: np.ndarray, index: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    # Per pair, so a row's distance does not depend on where it sits in the index.
    difference = index[candidates].astype(np.float64) - queries[:, None, :].astype(np.float64)
    return np.einsum("qcd,qcd->qc", difference, difference)
