import random

import numpy as np
import pytest

from guie.metric import bootstrap_standard_error, mean_precision_at_k, precision_at_k_per_query


@pytest.mark.parametrize(
    ("predicted", "relevant", "expected"),
    [
        (["a"], ["a"], 1.0),
        (["x", "a"], ["a"], 0.0),  # one answer: only rank 1 counts
        (["a", "x", "b"], ["a", "b", "c"], 2 / 3),
        (["a", "x", "x", "b"], ["a", "b", "c"], 1 / 3),  # rank 4 is past min(n_q, k) = 3
        (["a", "a", "b"], ["a", "b", "c"], 2 / 3),  # a repeated hit uses up rank 2
        (["x", "x", "a"], ["a", "b", "c"], 1 / 3),  # a repeated miss uses up rank 2
        (["a"], ["a", "b", "c"], 1 / 3),  # fewer predictions than counted ranks
        (["a", "b", "x", "c", "d", "e"], list("abcdef"), 4 / 5),  # n_q > k: precision@5, rank 6 ignored
        (["a", "b", "c", "d", "e"], list("abcdef"), 1.0),
        ([], ["a"], 0.0),
    ],
)
def test_query_precision_follows_host_rules(predicted, relevant, expected):
    scores = precision_at_k_per_query({"q": predicted}, {"q": relevant})
    assert scores == {"q": pytest.approx(expected)}


def test_mean_counts_unpredicted_solution_queries_as_zero():
    solution = {"q1": ["a"], "q2": ["b", "c"], "q3": ["d"], "q4": ["e", "f", "g"]}
    predictions = {"q1": ["a", "z"], "q2": ["c", "z"], "q4": ["e", "z", "f"]}
    # q1 1, q2 1/2, q3 unpredicted 0, q4 2/3
    assert mean_precision_at_k(predictions, solution) == pytest.approx((1 + 1 / 2 + 0 + 2 / 3) / 4)
    per_query = precision_at_k_per_query(predictions, solution)
    assert list(per_query) == ["q1", "q2", "q3", "q4"]
    assert per_query["q3"] == 0.0


def test_k_changes_how_many_ranks_count():
    solution = {"q": list("abcdef")}
    predictions = {"q": ["a", "x", "b", "c"]}
    assert mean_precision_at_k(predictions, solution, k=1) == 1.0
    assert mean_precision_at_k(predictions, solution, k=2) == pytest.approx(1 / 2)
    assert mean_precision_at_k(predictions, solution, k=4) == pytest.approx(3 / 4)


def test_prediction_for_unknown_query_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'q-unknown'.*not part of the solution"):
        mean_precision_at_k({"q-unknown": ["a"]}, {"q1": ["a"]})


def test_empty_ground_truth_is_an_error_naming_the_query():
    with pytest.raises(ValueError, match="'q2' has no relevant"):
        mean_precision_at_k({"q1": ["a"]}, {"q1": ["a"], "q2": []})


@pytest.mark.parametrize(("solution", "k"), [({}, 5), ({"q": ["a"]}, 0)])
def test_degenerate_inputs_are_errors(solution, k):
    with pytest.raises(ValueError):
        mean_precision_at_k({}, solution, k=k)


def _naive_mean_precision(predictions, solution, k):
    total = 0.0
    for query, relevant in solution.items():
        predicted = predictions.get(query, [])
        counted = min(len(relevant), k)
        hits = 0
        for rank in range(counted):
            if rank < len(predicted):
                image_id = predicted[rank]
                first_time = image_id not in predicted[:rank]
                hits += int(first_time and image_id in relevant)
        total += hits / counted
    return total / len(solution)


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_reference_on_random_data(seed):
    rnd = random.Random(seed)
    vocabulary = [f"i{n}" for n in range(12)]  # small, so repeats and hits are common
    solution = {f"q{n}": rnd.sample(vocabulary, rnd.randint(1, 8)) for n in range(200)}
    predictions = {
        query: [rnd.choice(vocabulary) for _ in range(rnd.randint(0, 7))] for query in solution if rnd.random() < 0.9
    }
    for k in (1, 3, 5):
        assert mean_precision_at_k(predictions, solution, k) == pytest.approx(
            _naive_mean_precision(predictions, solution, k), abs=1e-12
        )


def test_bootstrap_standard_error_is_deterministic_and_near_the_analytic_value():
    scores = np.random.default_rng(0).random(2000)
    first = bootstrap_standard_error(scores, n_resamples=1000, seed=7)
    assert bootstrap_standard_error(scores, n_resamples=1000, seed=7) == first
    assert bootstrap_standard_error(scores, n_resamples=1000, seed=8) != first
    analytic = scores.std(ddof=1) / np.sqrt(scores.size)
    assert first == pytest.approx(analytic, rel=0.1)


def test_bootstrap_of_constant_scores_is_zero():
    assert bootstrap_standard_error(np.full(50, 0.4), n_resamples=20, seed=0) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("scores", "n_resamples"),
    [(np.array([]), 10), (np.ones((3, 2)), 10), (np.array([0.1, np.nan]), 10), (np.ones(4), 1)],
)
def test_bootstrap_rejects_bad_input(scores, n_resamples):
    with pytest.raises(ValueError):
        bootstrap_standard_error(scores, n_resamples=n_resamples, seed=0)
