"""Popularity and first-order Markov baselines against a dense n x n reference and a case worked by hand."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec import SessionData, load_session_data
from gru4rec.evaluate import TIE_MODES, ranks_of_targets
from search.baselines import evaluate_baselines, markov_ranks, popularity_ranks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"


def sessions(lists, n_items, dtype=np.int64):
    """SessionData from lists of item indices, one list a session."""
    offsets = np.cumsum([0] + [len(s) for s in lists]).astype(np.int64)
    items = np.array([i for s in lists for i in s], dtype=dtype)
    return SessionData(items=items, offsets=offsets, item_ids=pd.Index(range(n_items)))


def session_pairs(data):
    """(input, target) of every prediction, session by session."""
    bounds = zip(data.offsets[:-1].tolist(), data.offsets[1:].tolist())
    pairs = [(data.items[j], data.items[j + 1]) for a, b in bounds for j in range(a, b - 1)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).T


def dense_ranks(train, test, mode, chunk=1024):
    """Both baselines by definition: float scores over the whole catalogue, ranked like the models."""
    n = train.n_items
    popularity = torch.as_tensor(np.bincount(train.items, minlength=n), dtype=torch.float64)
    table = torch.zeros(n, n, dtype=torch.float64)
    current, following = session_pairs(train)
    table.index_put_((torch.as_tensor(current), torch.as_tensor(following)),
                     torch.ones(len(current), dtype=torch.float64), accumulate=True)
    tie_break = popularity / (popularity.max() + 1)
    inputs, targets = (torch.as_tensor(a) for a in session_pairs(test))
    pop, markov = [], []
    for lo in range(0, len(inputs), chunk):
        rows, target = inputs[lo:lo + chunk], targets[lo:lo + chunk]
        pop.append(ranks_of_targets(popularity.expand(len(rows), n), target, mode))
        markov.append(ranks_of_targets(table[rows] + tie_break, target, mode))
    return torch.cat(pop).numpy(), torch.cat(markov).numpy()


def metrics(ranks, cutoffs):
    out = {}
    for k in cutoffs:
        out[f"Recall@{k}"] = float(np.mean(ranks <= k))
        out[f"MRR@{k}"] = float(np.mean(np.where(ranks <= k, 1 / ranks, 0)))
    return out


def random_sessions(rng, n_sessions, n_used):
    """Sessions of 1-5 events over the first `n_used` items, skewed so that popularities and counts tie."""
    weights = 1 / np.arange(1, n_used + 1) ** 1.2
    return [rng.choice(n_used, size=rng.integers(1, 6), p=weights / weights.sum()).tolist()
            for _ in range(n_sessions)]


# Worked by hand. Training popularity: item 0: 3, items 1, 2, 3: 2 each, item 4: 1, item 5: 0 (never trained).
# Transitions: 0->1, 0->2, 3->1, 3->2, 4->0, one each.
TRAIN = [[0, 1], [0, 2], [3, 1], [3, 2], [4, 0]]
TEST = [[0, 1, 3, 5], [4, 2], [0, 3]]  # predictions 0->1, 1->3, 3->5, 4->2, 0->3
# Popularity, targets 1, 3, 5, 2, 3: one item (0) above each of 1, 2, 3, level with two others;
# item 5 is below all five others.
HAND_POPULARITY = {"standard": [2, 2, 6, 2, 2], "conservative": [4, 4, 6, 4, 4], "median": [3, 3, 6, 3, 3]}
# Markov:
# 0->1: followers of 0 are 1 and 2, both once and equally popular: level with 2, nothing above.
# 1->3: 1 has no followers, so popularity alone: as for popularity.
# 3->5: followers 1, 2 above, then non-followers 0, 3, 4 (popularity > 0) above: 5 above, alone.
# 4->2: follower 0 above; the non-followers are 1, 2, 3, 5: none more popular than 2, 1 and 3 as popular.
# 0->3: followers 1, 2 above although only as popular as 3; non-follower 0 above; 3 level with itself only.
HAND_MARKOV = {"standard": [1, 2, 6, 2, 4], "conservative": [2, 4, 6, 4, 4], "median": [1.5, 3, 6, 3, 4]}


@pytest.mark.parametrize("mode", TIE_MODES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_hand_computed_ranks(mode, dtype):
    train, test = sessions(TRAIN, 6, dtype), sessions(TEST, 6, dtype)
    inputs, targets = np.array([0, 1, 3, 4, 0], dtype=dtype), np.array([1, 3, 5, 2, 3], dtype=dtype)
    np.testing.assert_array_equal(session_pairs(test), [inputs, targets])
    assert popularity_ranks(train, targets, mode).tolist() == HAND_POPULARITY[mode]
    assert markov_ranks(train, inputs, targets, mode).tolist() == HAND_MARKOV[mode]


def test_hand_computed_metrics():
    found = evaluate_baselines(sessions(TRAIN, 6), sessions(TEST, 6), (1, 2, 5), "standard")
    # popularity ranks 2, 2, 6, 2, 2; Markov ranks 1, 2, 6, 2, 4
    assert found["popularity"] == pytest.approx({"Recall@1": 0, "MRR@1": 0, "Recall@2": 0.8, "MRR@2": 0.4,
                                                 "Recall@5": 0.8, "MRR@5": 0.4})
    assert found["markov"] == pytest.approx({"Recall@1": 0.2, "MRR@1": 0.2, "Recall@2": 0.6, "MRR@2": 0.4,
                                             "Recall@5": 0.8, "MRR@5": 0.45})
    assert list(found["markov"]) == ["Recall@1", "MRR@1", "Recall@2", "MRR@2", "Recall@5", "MRR@5"]


@pytest.mark.parametrize("mode", TIE_MODES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("seed", range(4))
def test_random_data_matches_dense_reference(mode, dtype, seed):
    rng = np.random.default_rng(seed)
    n = 15  # items 12-14 are never trained; the test uses them as inputs and targets too
    train = sessions(random_sessions(rng, 60, 12), n, dtype)
    test = sessions(random_sessions(rng, 80, 15), n, dtype)
    inputs, targets = session_pairs(test)
    popularity = np.bincount(train.items, minlength=n)
    transitions = set(zip(*session_pairs(train)))
    assert len(np.unique(popularity)) < n  # popularity ties
    assert len(transitions) < len(session_pairs(train)[0])  # some transition counts above 1, so counts differ
    assert any(pair not in transitions for pair in zip(inputs, targets))  # targets never seen after their input
    expected_pop, expected_markov = dense_ranks(train, test, mode)
    np.testing.assert_array_equal(popularity_ranks(train, targets.astype(dtype), mode), expected_pop)
    np.testing.assert_array_equal(markov_ranks(train, inputs.astype(dtype), targets.astype(dtype), mode),
                                  expected_markov)
    found = evaluate_baselines(train, test, (1, 3, 10), mode)
    assert found["popularity"] == pytest.approx(metrics(expected_pop, (1, 3, 10)))
    assert found["markov"] == pytest.approx(metrics(expected_markov, (1, 3, 10)))


def test_unknown_tie_mode():
    with pytest.raises(ValueError, match="tie mode"):
        evaluate_baselines(sessions(TRAIN, 6), sessions(TEST, 6), (1,), "optimistic")


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/rsc15_100k")
def test_rsc15_matches_dense_reference():
    train = load_session_data(DATA / "train_full.tsv")
    test = load_session_data(DATA / "test.tsv", item_ids=train.item_ids)
    inputs, targets = session_pairs(test)
    expected_pop, expected_markov = dense_ranks(train, test, "standard")
    np.testing.assert_array_equal(markov_ranks(train, inputs, targets, "standard"), expected_markov)
    found = evaluate_baselines(train, test, (1, 5, 20), "standard")
    assert found == {"popularity": pytest.approx(metrics(expected_pop, (1, 5, 20))),
                     "markov": pytest.approx(metrics(expected_markov, (1, 5, 20)))}
