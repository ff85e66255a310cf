"""The local retrieval task, shaped like Kaggle's: queries of held-out classes against an index
holding the rest of their class plus distractors, scored with the host's metric."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from guie.data.manifest import ManifestRow
from guie.metric import precision_at_k_per_query
from guie.retrieval import topk_euclidean


@dataclass(frozen=True)
class RetrievalTask:
    queries: list[ManifestRow]
    index: list[ManifestRow]
    solution: dict[str, list[str]]  # query path -> relevant index paths


def build_task(
    heldout: Sequence[ManifestRow], distractors: Sequence[ManifestRow], queries_per_class: int
) -> RetrievalTask:
    """The first `queries_per_class` images (by path) of each held-out class are queries."""
    by_label: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in sorted(heldout, key=lambda r: r.path):
        by_label[row.label].append(row)
    queries, index, solution = [], [], {}
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) <= queries_per_class:
            continue  # no relevant image left for the index
        q, rest = rows[:queries_per_class], rows[queries_per_class:]
        queries += q
        index += rest
        for row in q:
            solution[row.path] = [r.path for r in rest]
    index += sorted(distractors, key=lambda r: r.path)
    return RetrievalTask(queries, index, solution)


def predict(task: RetrievalTask, query_emb: np.ndarray, index_emb: np.ndarray, k: int) -> dict[str, list[str]]:
    _, idx = topk_euclidean(np.ascontiguousarray(query_emb, np.float32), np.ascontiguousarray(index_emb, np.float32), k)
    return {q.path: [task.index[j].path for j in row] for q, row in zip(task.queries, idx, strict=True)}


def score(
    task: RetrievalTask, query_emb: np.ndarray, index_emb: np.ndarray, k: int
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Per-query precision terms (host semantics) and the predictions behind them."""
    predictions = predict(task, query_emb, index_emb, k)
    return precision_at_k_per_query(predictions, task.solution, k), predictions
