"""Synthetic session data: Zipf item popularity, sparse Markov transitions, timestamps, a time split.

The sessions have learnable structure (each item has a few likely successors), so a sequence model
beats popularity on them; that makes them fit for demos, tests and benchmarks from 1k to 10M events.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_directory

DAY = 86400.0


@dataclass
class SyntheticSpec:
    """Knobs of the generator; `n_items` defaults to about one item per 25 events."""

    n_events: int = 100_000
    n_items: int | None = None
    mean_length: float = 5.0
    zipf_exponent: float = 1.1
    n_successors: int = 4
    follow_p: float = 0.7
    days: float = 30.0
    seed: int = 0

    def items(self) -> int:
        return self.n_items or int(np.clip(self.n_events // 25, 50, 1_000_000))


def generate_sessions(spec: SyntheticSpec) -> pd.DataFrame:
    """Events (SessionId, ItemId, Time in seconds), sessions in order of their start time."""
    rng = np.random.default_rng(spec.seed)
    n_items = spec.items()
    popularity = 1.0 / np.arange(1, n_items + 1) ** spec.zipf_exponent
    pop_cdf = np.cumsum(popularity / popularity.sum())

    def draw_popular(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(pop_cdf, rng.random(n), side="right"), n_items - 1)

    successors = draw_popular(n_items * spec.n_successors).reshape(n_items, spec.n_successors)
    succ_cdf = np.cumsum(0.5 ** np.arange(spec.n_successors))
    succ_cdf /= succ_cdf[-1]

    # Session lengths: 2 + geometric, capped, trimmed so the total is exactly n_events.
    n_guess = int(spec.n_events / spec.mean_length * 1.2) + 2
    lengths = np.minimum(2 + rng.geometric(1.0 / max(spec.mean_length - 1.0, 1.0), n_guess) - 1, 50)
    cum = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(cum, spec.n_events)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= cum[n_sessions - 1] - spec.n_events
    if lengths[-1] < 2:
        lengths = lengths[:-1]
        lengths[-1] += spec.n_events - lengths.sum()
    offsets = np.concatenate(([0], np.cumsum(lengths)))

    items = np.empty(offsets[-1], dtype=np.int64)
    items[offsets[:-1]] = draw_popular(len(lengths))
    for step in range(1, int(lengths.max())):
        sessions = np.flatnonzero(lengths > step)
        pos = offsets[sessions] + step
        previous = items[pos - 1]
        choice = np.searchsorted(succ_cdf, rng.random(len(pos)), side="right")
        follow = rng.random(len(pos)) < spec.follow_p
        items[pos] = np.where(follow, successors[previous, np.minimum(choice, spec.n_successors - 1)],
                              draw_popular(len(pos)))

    starts = np.sort(rng.random(len(lengths)) * spec.days * DAY)
    gaps = rng.exponential(60.0, offsets[-1])
    gaps[offsets[:-1]] = 0.0
    session_of_event = np.repeat(np.arange(len(lengths)), lengths)
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offsets[:-1]], lengths)
    time = 1_500_000_000.0 + starts[session_of_event] + within
    item_ids = rng.permutation(n_items) + 1000  # ids differ from indices, like real data
    return pd.DataFrame({"SessionId": session_of_event + 1, "ItemId": item_ids[items], "Time": np.round(time, 3)})


def split_by_time(events: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions starting in the last `days` days are the test set; its events of unseen items are removed."""
    start = events.groupby("SessionId")["Time"].transform("min")
    is_test = start >= events["Time"].max() - days * DAY
    train, test = events[~is_test], events[is_test]
    test = test[test["ItemId"].isin(train["ItemId"].unique())]
    test = test[test.groupby("SessionId")["ItemId"].transform("size") >= 2]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def write_splits(out_dir: str | os.PathLike, spec: SyntheticSpec, test_days: float = 1.0) -> dict[str, Path]:
    """Write train_full/test and train_tr/train_valid TSV files (the same time split applied twice)."""
    out = Path(out_dir)
    train_full, test = split_by_time(generate_sessions(spec), test_days)
    train_tr, train_valid = split_by_time(train_full, test_days)
    frames = {"train_full": train_full, "test": test, "train_tr": train_tr, "train_valid": train_valid}
    with atomic_directory(out, [f"{name}.tsv" for name in frames]) as staging:
        for name, frame in frames.items():
            frame.to_csv(staging / f"{name}.tsv", sep="\t", index=False)
    return {name: out / f"{name}.tsv" for name in frames}
