import numpy as np

from guie.data.manifest import ManifestRow
from guie.retrieval_task import build_task, score


def _row(path, label, domain="cars", split="heldout"):
    return ManifestRow(path, "0" * 64, "s", domain, label, split, 10, 10)


def test_task_has_one_query_per_class_and_distractors_in_the_index():
    heldout = [_row(f"{c}/{i}.jpg", c) for c in "ab" for i in range(3)] + [_row("c/0.jpg", "c")]
    distractors = [_row(f"p/{i}.jpg", "pca", split="pca") for i in range(4)]
    task = build_task(heldout, distractors, queries_per_class=1)
    assert [q.path for q in task.queries] == ["a/0.jpg", "b/0.jpg"]  # class c has no image left for the index
    assert task.solution == {"a/0.jpg": ["a/1.jpg", "a/2.jpg"], "b/0.jpg": ["b/1.jpg", "b/2.jpg"]}
    assert len(task.index) == 4 + 4


def test_score_uses_euclidean_top_k_and_host_precision():
    heldout = [_row(f"{c}/{i}.jpg", c) for c in "ab" for i in range(3)]
    task = build_task(heldout, [], 1)
    q = np.array([[1, 0], [0, 1]], np.float32)
    # index order: a/1, a/2, b/1, b/2; query a finds a/1 then b/1: 1 of min(2, k=2) relevant
    idx = np.array([[1, 0], [-1, 0], [0.9, 0.1], [0, 1]], np.float32)
    per_query, predictions = score(task, q, idx, k=2)
    assert predictions["a/0.jpg"] == ["a/1.jpg", "b/1.jpg"]
    assert per_query == {"a/0.jpg": 0.5, "b/0.jpg": 1.0}
