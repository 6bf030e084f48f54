"""Two baselines on the same test split, so a results table shows whether a tuned model earns its cost.

- popularity: every item scored by its training count;
- first-order Markov: the items that most often followed the current item in training sessions, ties
  (and items never seen after it) broken by popularity, i.e. score count(i -> j) + pop_j / (max_pop + 1).
Ranked over the whole catalogue in the same tie mode as the models, exactly from integer counts: the
transitions are counted once into sorted arrays and every prediction is ranked by binary search, so
nothing n_items x n_items (or n_items per test row) is ever built.
"""
from __future__ import annotations

import numpy as np

from gru4rec import SessionData
from gru4rec.evaluate import TIE_MODES


def pairs(data: SessionData) -> tuple[np.ndarray, np.ndarray]:
    """(current item, next item) of every prediction in the data."""
    keep = np.ones(data.n_events, dtype=bool)
    keep[data.offsets[1:] - 1] = False  # the last event of a session predicts nothing
    index = np.flatnonzero(keep)
    return data.items[index], data.items[index + 1]


def _tie_rank(greater: np.ndarray, equal: np.ndarray, mode: str) -> np.ndarray:
    """Rank from the number of items scored above the target and level with it (the target included)."""
    if mode == "standard":
        return greater + 1.0
    if mode == "conservative":
        return (greater + equal).astype(np.float64)
    if mode == "median":
        return greater + 0.5 * (equal - 1) + 1.0
    raise ValueError(f"tie mode {mode!r}: allowed values are {', '.join(TIE_MODES)}")


def _above_and_level(popularity: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items more popular than each target, and as popular (the target included)."""
    ordered = np.sort(popularity)
    p = popularity[targets]
    below_or_level = np.searchsorted(ordered, p, side="right")
    return len(ordered) - below_or_level, below_or_level - np.searchsorted(ordered, p, side="left")


def popularity_ranks(train: SessionData, targets: np.ndarray, mode: str) -> np.ndarray:
    """Rank of each target when every item is scored by its training count."""
    return _tie_rank(*_above_and_level(train.item_counts(), targets), mode)


def markov_ranks(train: SessionData, inputs: np.ndarray, targets: np.ndarray, mode: str) -> np.ndarray:
    """Rank of each target after its input item under the first-order Markov score.

    A target seen after its input is compared, by (count, popularity), only with the input's followers
    (everything else scores below it); an unseen one is beaten by every follower and by the non-followers
    more popular than it, and is level with the non-followers as popular.
    """
    n = train.n_items
    popularity = train.item_counts()
    level = np.unique(popularity, return_inverse=True)[1].ravel()  # dense popularity rank of each item
    n_levels = int(level.max()) + 1
    current, following = pairs(train)
    transitions, counts = np.unique(current.astype(np.int64) * n + following, return_counts=True)
    del current, following
    row, col = np.divmod(transitions, n)  # sorted by (row, col): the followers of each item are one run
    bounds = np.searchsorted(row, np.arange(n + 1))
    ends, degree = bounds[1:], np.diff(bounds)
    # A transition's strength is the dense rank of its (count, popularity), so that row * strengths fits int64.
    strength = np.unique(counts * n_levels + level[col], return_inverse=True)[1].ravel()
    n_strengths = int(strength.max(initial=0)) + 1
    by_strength = np.sort(row * n_strengths + strength)
    by_level = np.sort(row * n_levels + level[col])
    del row, col, counts

    inputs = inputs.astype(np.int64)
    queries = inputs * n + targets
    entry = np.searchsorted(transitions, queries)
    inside = np.flatnonzero(entry < len(transitions))
    seen = np.zeros(len(queries), dtype=bool)
    seen[inside] = transitions[entry[inside]] == queries[inside]
    greater = np.empty(len(queries), dtype=np.int64)
    equal = np.empty(len(queries), dtype=np.int64)

    i = inputs[seen]
    key = i * n_strengths + strength[entry[seen]]
    lo, hi = np.searchsorted(by_strength, key, side="left"), np.searchsorted(by_strength, key, side="right")
    greater[seen], equal[seen] = ends[i] - hi, hi - lo

    i, t = inputs[~seen], targets[~seen]
    key = i * n_levels + level[t]
    lo, hi = np.searchsorted(by_level, key, side="left"), np.searchsorted(by_level, key, side="right")
    above, as_popular = _above_and_level(popularity, t)
    greater[~seen] = degree[i] + above - (ends[i] - hi)
    equal[~seen] = as_popular - (hi - lo)
    return _tie_rank(greater, equal, mode)


def evaluate_baselines(train: SessionData, test: SessionData, cutoffs: tuple[int, ...],
                       mode: str) -> dict[str, dict[str, float]]:
    """{'popularity': {'Recall@k': ..., 'MRR@k': ...}, 'markov': {...}} on the test split."""
    inputs, targets = pairs(test)
    results = {}
    for name, ranks in (("popularity", popularity_ranks(train, targets, mode)),
                        ("markov", markov_ranks(train, inputs, targets, mode))):
        total = max(len(ranks), 1)
        metrics = {}
        for k in cutoffs:
            hit = ranks <= k
            metrics[f"Recall@{k}"] = float(hit.sum()) / total
            metrics[f"MRR@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).sum()) / total
        results[name] = metrics
    return results
