"""Two baselines on the same test split, so a results table shows whether a tuned model earns its cost.

- popularity: every item scored by its training count;
- first-order Markov: the items that most often followed the current item in training sessions, ties
  (and items never seen after it) broken by popularity.
Ranked over the whole catalogue in the same tie mode as the models.
"""
from __future__ import annotations

import numpy as np
import torch

from gru4rec import SessionData
from gru4rec.evaluate import ranks_of_targets

ROWS_AT_ONCE = 1 << 24  # score-matrix elements per chunk


def pairs(data: SessionData) -> tuple[np.ndarray, np.ndarray]:
    """(current item, next item) of every prediction in the data."""
    keep = np.ones(data.n_events, dtype=bool)
    keep[data.offsets[1:] - 1] = False  # the last event of a session predicts nothing
    index = np.flatnonzero(keep)
    return data.items[index], data.items[index + 1]


def evaluate_baselines(train: SessionData, test: SessionData, cutoffs: tuple[int, ...],
                       mode: str) -> dict[str, dict[str, float]]:
    """{'popularity': {'Recall@k': ..., 'MRR@k': ...}, 'markov': {...}} on the test split."""
    n = train.n_items
    popularity = torch.as_tensor(train.item_counts(), dtype=torch.float64)
    tie_break = popularity / (popularity.max() + 1)  # < 1: orders items within one transition count
    current, following = pairs(train)
    transitions = None
    if n * n <= 1 << 27:  # a dense table up to 1 GB; larger catalogues count per chunk of rows
        flat = torch.as_tensor(current * n + following)
        transitions = torch.zeros(n * n, dtype=torch.float64).index_add_(0, flat, torch.ones(len(flat),
                                                                                              dtype=torch.float64))
        transitions = transitions.view(n, n)
    inputs, targets = (torch.as_tensor(a) for a in pairs(test))
    results = {}
    for name in ("popularity", "markov"):
        hits = {k: 0.0 for k in cutoffs}
        rr = {k: 0.0 for k in cutoffs}
        chunk = max(1, ROWS_AT_ONCE // n)
        for lo in range(0, len(inputs), chunk):
            rows, target = inputs[lo:lo + chunk], targets[lo:lo + chunk]
            if name == "popularity":
                scores = popularity.expand(len(rows), n)
            else:
                counts = transitions[rows] if transitions is not None else _transition_rows(current, following, rows, n)
                scores = counts + tie_break
            ranks = ranks_of_targets(scores, target, mode)
            for k in cutoffs:
                hit = ranks <= k
                hits[k] += hit.sum().item()
                rr[k] += (hit / ranks).sum().item()
        total = max(len(inputs), 1)
        results[name] = {f"{m}@{k}": v[k] / total for k in cutoffs for m, v in (("Recall", hits), ("MRR", rr))}
    return results


def _transition_rows(current: np.ndarray, following: np.ndarray, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Transition counts from each item of `rows` (for catalogues too large for a dense n x n table)."""
    out = torch.zeros(len(rows), n, dtype=torch.float64)
    order = np.argsort(current, kind="stable")
    sorted_current = current[order]
    for i, item in enumerate(rows.tolist()):
        lo, hi = np.searchsorted(sorted_current, [item, item + 1])
        np.add.at(out[i].numpy(), following[order[lo:hi]], 1.0)
    return out
