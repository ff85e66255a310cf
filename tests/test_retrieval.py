import faiss
import numpy as np
import pytest

from guie.retrieval import topk_euclidean


def _unit_rows(rng, n, d):
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _naive_topk(queries, index, k):
    distances = np.sqrt(((queries[:, None, :].astype(np.float64) - index[None].astype(np.float64)) ** 2).sum(-1))
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.mark.parametrize(("k", "chunk_size"), [(1, 4096), (5, 7), (5, 1), (40, 64)])
def test_matches_naive_brute_force(k, chunk_size):
    rng = np.random.default_rng(k)
    queries, index = _unit_rows(rng, 150, 16), _unit_rows(rng, 300, 16)
    distances, indices = topk_euclidean(queries, index, k, chunk_size=chunk_size)
    expected_distances, expected_indices = _naive_topk(queries, index, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert distances.shape == indices.shape == (150, k)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6, atol=1e-6)


def test_equal_distances_come_back_smaller_row_first():
    rng = np.random.default_rng(0)
    axes = np.concatenate([np.eye(8), -np.eye(8)]).astype(np.float32)[rng.permutation(16)]
    index = np.concatenate([axes * 2.0, axes])  # rows 16..31 are all exactly 1 away from the origin
    _, indices = topk_euclidean(np.zeros((3, 8), dtype=np.float32), index, k=5)
    np.testing.assert_array_equal(indices, np.tile(np.arange(16, 21), (3, 1)))


def test_duplicate_index_rows_are_ordered_by_row_number():
    rng = np.random.default_rng(1)
    index = _unit_rows(rng, 400, 64)
    for row in (350, 3, 120):
        index[row] = index[200]
    _, indices = topk_euclidean(index[[200]], index, k=4)
    np.testing.assert_array_equal(indices[0], [3, 120, 200, 350])


def test_result_does_not_depend_on_chunking_or_threads():
    # 2,500 queries at 64-d cross faiss's switch to its BLAS kernel; 97-query chunks never do.
    rng = np.random.default_rng(2)
    queries, index = _unit_rows(rng, 2500, 64), _unit_rows(rng, 1000, 64)
    one_chunk = topk_euclidean(queries, index, k=5, chunk_size=4096, n_threads=1)
    for chunk_size, n_threads in [(97, 1), (97, 3), (4096, 4)]:
        other = topk_euclidean(queries, index, k=5, chunk_size=chunk_size, n_threads=n_threads)
        np.testing.assert_array_equal(one_chunk[1], other[1])
        np.testing.assert_array_equal(one_chunk[0], other[0])


def test_leaves_the_callers_faiss_thread_count_alone():
    before = faiss.omp_get_max_threads()
    topk_euclidean(np.zeros((3, 4), np.float32), np.ones((6, 4), np.float32), k=2, n_threads=2)
    assert faiss.omp_get_max_threads() == before


def test_no_queries_gives_empty_results():
    distances, indices = topk_euclidean(np.empty((0, 4), np.float32), np.ones((6, 4), np.float32), k=5)
    assert distances.shape == indices.shape == (0, 5)


@pytest.mark.parametrize(
    ("queries", "index", "k", "message"),
    [
        (np.zeros((2, 4)), np.zeros((6, 4), np.float32), 1, "queries must be a 2-D float32"),
        (np.zeros((2, 4), np.float32), np.zeros(6, np.float32), 1, "index must be a 2-D float32"),
        (np.zeros((2, 4), np.float32), np.zeros((6, 3), np.float32), 1, "4 dimensions but the index has 3"),
        (np.zeros((2, 4), np.float32), np.zeros((6, 4), np.float32), 0, "between 1 and the index size 6"),
        (np.zeros((2, 4), np.float32), np.zeros((6, 4), np.float32), 7, "between 1 and the index size 6"),
        (np.zeros((2, 4), np.float32), np.zeros((6, 4), np.float32), 2.0, "k must be an integer"),
        (np.array([[0, 0], [0, np.nan]], np.float32), np.zeros((6, 2), np.float32), 1, "queries row 1 contains NaN"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(queries, index, k, message):
    with pytest.raises(ValueError, match=message):
        topk_euclidean(queries, index, k)


@pytest.mark.parametrize("setting", [{"chunk_size": 0}, {"n_threads": 0}])
def test_chunk_size_and_threads_must_be_positive(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        topk_euclidean(np.zeros((1, 2), np.float32), np.zeros((3, 2), np.float32), 1, **setting)
