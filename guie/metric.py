"""The competition metric, modified mean Precision@k, with the host's exact semantics.

Per query q with n_q relevant index images, only the first min(n_q, k) predictions count;
a repeated predicted id uses up its rank and scores nothing; the mean runs over every query
of the solution, so a query without predictions scores 0 (the host's `CalibratedPrecision`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _check(predictions: Mapping[str, Sequence[str]], solution: Mapping[str, Sequence[str]], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not solution:
        raise ValueError("the solution has no queries: mP@k is undefined")
    # The host only catches empty ground truth for predicted queries; an empty list anywhere
    # in our own solution is a data bug, so it is refused up front.
    for query, relevant in solution.items():
        if len(relevant) == 0:
            raise ValueError(f"query {query!r} has no relevant index images in the solution")
    for query in predictions:
        if query not in solution:
            raise ValueError(f"query {query!r} is predicted but is not part of the solution")


def _query_precision(predicted: Sequence[str], relevant: Sequence[str], k: int) -> float:
    # n_q is the length of the ground-truth list as given, as the host counts it.
    n_counted = min(len(relevant), k)
    relevant_ids = set(relevant)
    seen: set[str] = set()
    hits = 0
    for image_id in predicted[:n_counted]:
        if image_id not in seen and image_id in relevant_ids:
            hits += 1
        seen.add(image_id)
    return hits / n_counted


def precision_at_k_per_query(
    predictions: Mapping[str, Sequence[str]], solution: Mapping[str, Sequence[str]], k: int = 5
) -> dict[str, float]:
    """Each solution query's calibrated precision@k (0 where it has no prediction), in solution order."""
    _check(predictions, solution, k)
    return {query: _query_precision(predictions.get(query, ()), relevant, k) for query, relevant in solution.items()}


def mean_precision_at_k(
    predictions: Mapping[str, Sequence[str]], solution: Mapping[str, Sequence[str]], k: int = 5
) -> float:
    """mP@k: the mean of `precision_at_k_per_query` over all solution queries."""
    per_query = precision_at_k_per_query(predictions, solution, k)
    return sum(per_query.values()) / len(per_query)


def bootstrap_standard_error(per_query_scores: np.ndarray, n_resamples: int, seed: int) -> float:
    """Standard error of the mean score, by resampling queries with replacement (deterministic in `seed`)."""
    scores = np.asarray(per_query_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"per_query_scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("per_query_scores contains NaN or infinite values")
    if n_resamples < 2:
        raise ValueError(f"n_resamples must be at least 2, got {n_resamples}")
    rng = np.random.default_rng(seed)
    # Drawn a block of resamples at a time so memory stays bounded for large n_resamples.
    means = np.empty(n_resamples)
    block = max(1, 2**22 // scores.size)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        picks = rng.integers(0, scores.size, size=(stop - start, scores.size))
        means[start:stop] = scores[picks].mean(axis=1)
    return float(means.std(ddof=1))
