"""Synthetic session data with context a first-order model cannot see: latent intents, steps back, Zipf popularity.

Each session follows an intent, one of a few dozen overlapping groups of items; its next item is a successor of
the previous item within the intent, a step back to the item before it (A B A), or a popular item of the intent.
Every item belongs to several intents, so the previous item alone leaves the intent open and a first-order Markov
model is a decent but beatable baseline, while a sequence model that reads the earlier items beats it, as GRU4Rec
beats Markov on real e-commerce sessions. Vectorised over sessions, so 30M events take seconds and memory stays
within a few times the output's size. Used for the demo, tests and benchmarks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..files import atomic_directory

DAY = 86400.0
FORMATS = ("tsv", "parquet")
MAX_LENGTH = 50


@dataclass
class SyntheticSpec:
    """Knobs of the generator; `n_items` defaults to about one item per 25 events.

    After a session's first item, each step first moves the intent (with `drift_p`) to one of the intents of
    the previous item, then takes one of the previous item's `n_successors` successors in the intent (`follow_p`),
    the item before the previous one (`back_p`), any item by popularity (`noise_p`), or else an item of the
    intent by popularity. Item popularity is Zipf with `zipf_exponent`, both overall and inside each intent.
    """

    n_events: int = 100_000
    n_items: int | None = None
    mean_length: float = 5.0
    zipf_exponent: float = 1.0
    n_intents: int = 48
    intents_per_item: int = 2
    n_successors: int = 4
    follow_p: float = 0.15
    back_p: float = 0.25
    noise_p: float = 0.05
    drift_p: float = 0.05
    days: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_events < 2:
            raise ValueError(f"n_events={self.n_events}: a session has at least 2 events")
        if not 1 <= self.intents_per_item <= self.n_intents:
            raise ValueError(f"intents_per_item={self.intents_per_item}: must be in 1..n_intents ({self.n_intents})")
        if min(self.follow_p, self.back_p, self.noise_p, self.drift_p) < 0 or \
                self.follow_p + self.back_p + self.noise_p > 1:
            raise ValueError("follow_p, back_p, noise_p and drift_p must be >= 0, and follow_p + back_p + noise_p <= 1")

    def items(self) -> int:
        return self.n_items or int(np.clip(self.n_events // 25, 50, 1_000_000))


class _Intents:
    """Which intents each item belongs to, each intent's popularity distribution and each item's successors."""

    def __init__(self, spec: SyntheticSpec, weight: np.ndarray, rng: np.random.Generator):
        n_items = len(weight)
        k = min(spec.n_intents, n_items)
        m = min(spec.intents_per_item, k)
        # m distinct intents per item: a first one that leaves no intent empty, then strides summing to < k.
        first = (rng.permutation(n_items) % k).astype(np.int32)[:, None]
        strides = rng.integers(1, k // m + 1, (n_items, m - 1), dtype=np.int32)
        self.of_item = (first + np.concatenate([np.zeros((n_items, 1), np.int32), np.cumsum(strides, 1)], 1)) % k
        # The members of intent j are members[start[j]:start[j + 1]], by index (that is, by popularity).
        flat = self.of_item.ravel()
        order = np.argsort(flat, kind="stable")
        intent_of = flat[order]
        self.members = (order // m).astype(np.int32)
        self.start = np.searchsorted(intent_of, np.arange(k + 1))
        # cdf[start[j]:start[j + 1]] rises from just above j to exactly j + 1: one sorted array serves all intents.
        cumulative = np.cumsum(weight[self.members])
        before = np.concatenate(([0.0], cumulative))[self.start]
        self.cdf = intent_of + (cumulative - before[intent_of]) / (before[1:] - before[:-1])[intent_of]
        self.cdf[self.start[1:] - 1] = np.arange(1, k + 1)
        self.successors = self.draw(np.repeat(flat, spec.n_successors), rng).reshape(n_items, m, spec.n_successors)

    def draw(self, intent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item of each given intent, by popularity within the intent."""
        at = np.searchsorted(self.cdf, intent + rng.random(len(intent)), side="right")
        return self.members[np.minimum(at, self.start[intent + 1] - 1)]


def _session_lengths(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """1 + geometric (so at least 2, mean about `mean_length`), capped at MAX_LENGTH, summing to exactly n_events."""
    p = 1.0 / max(spec.mean_length - 1.0, 1.0)
    lengths = np.zeros(0, dtype=np.int64)
    while lengths.sum() < spec.n_events:  # one draw almost always suffices
        more = np.minimum(1 + rng.geometric(p, int(spec.n_events / spec.mean_length * 1.2) + 2), MAX_LENGTH)
        lengths = np.concatenate([lengths, more])
    cum = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(cum, spec.n_events)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= cum[n_sessions - 1] - spec.n_events
    if lengths[-1] < 2:
        lengths = lengths[:-1]
        lengths[-1] += spec.n_events - lengths.sum()
    return lengths


def generate_sessions(spec: SyntheticSpec) -> pd.DataFrame:
    """Events (SessionId, ItemId, Time in seconds), sessions in order of their start time; the same for a seed."""
    rng = np.random.default_rng(spec.seed)
    n_items = spec.items()
    weight = 1.0 / np.arange(1, n_items + 1) ** spec.zipf_exponent
    pop_cdf = np.cumsum(weight / weight.sum())
    intents = _Intents(spec, weight, rng)
    successor_cdf = np.cumsum(0.5 ** np.arange(spec.n_successors))
    successor_cdf /= successor_cdf[-1]

    lengths = _session_lengths(spec, rng)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    n_sessions = len(lengths)
    intent = rng.integers(0, len(intents.start) - 1, n_sessions, dtype=np.int32)
    items = np.empty(spec.n_events, dtype=np.int32)
    items[offsets[:-1]] = intents.draw(intent, rng)
    time = np.empty(spec.n_events)
    time[offsets[:-1]] = 1_500_000_000.0 + np.sort(rng.random(n_sessions)) * spec.days * DAY
    alive = np.arange(n_sessions)
    for step in range(1, int(lengths.max())):
        alive = alive[lengths[alive] > step]
        pos = offsets[alive] + step
        previous = items[pos - 1]
        current = intent[alive]
        drift = np.flatnonzero(rng.random(len(pos)) < spec.drift_p)
        current[drift] = intents.of_item[previous[drift], rng.integers(0, intents.of_item.shape[1], len(drift))]
        intent[alive] = current
        slot_match = intents.of_item[previous] == current[:, None]
        r = rng.random(len(pos))
        follow = (r < spec.follow_p) & slot_match.any(1)
        back = (r >= spec.follow_p) & (r < spec.follow_p + spec.back_p) & (step >= 2)
        noise = r >= 1.0 - spec.noise_p
        rest = ~(follow | back | noise)
        nxt = np.empty(len(pos), dtype=np.int32)
        rank = np.searchsorted(successor_cdf, rng.random(int(follow.sum())), side="right")
        nxt[follow] = intents.successors[previous[follow], slot_match[follow].argmax(1),
                                         np.minimum(rank, spec.n_successors - 1)]
        nxt[back] = items[pos[back] - 2]
        nxt[noise] = np.minimum(np.searchsorted(pop_cdf, rng.random(int(noise.sum())), side="right"), n_items - 1)
        nxt[rest] = intents.draw(current[rest], rng)
        items[pos] = nxt
        time[pos] = time[pos - 1] + rng.exponential(60.0, len(pos))
    item_ids = rng.permutation(n_items).astype(np.int32) + 1000  # ids differ from indices, like real data
    items = item_ids[items]
    sessions = np.repeat(np.arange(1, n_sessions + 1, dtype=np.int32), lengths)
    return pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": np.round(time, 3, out=time)}, copy=False)


def split_by_time(events: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions starting in the last `days` days are the test set; its events of unseen items are removed."""
    start = events.groupby("SessionId")["Time"].transform("min")
    is_test = start >= events["Time"].max() - days * DAY
    train, test = events[~is_test], events[is_test]
    test = test[test["ItemId"].isin(train["ItemId"].unique())]
    test = test[test.groupby("SessionId")["ItemId"].transform("size") >= 2]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    """TAB-separated with a plain header line (Arrow would quote it), or Parquet."""
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    with pa.OSFile(str(path), "wb") as sink:
        sink.write("\t".join(table.column_names).encode() + b"\n")
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))


def write_splits(out_dir: str | os.PathLike, spec: SyntheticSpec, test_days: float = 1.0,
                 formats: Sequence[str] = ("tsv",)) -> dict[str, Path]:
    """Write train_full/test and train_tr/train_valid (the same time split applied twice) in each of `formats`
    ('tsv', 'parquet') into `out_dir` as a whole; return the path of each split in the first format."""
    if not formats or any(fmt not in FORMATS for fmt in formats):
        raise ValueError(f"formats {list(formats)}: choose one or more of {', '.join(FORMATS)}")
    out = Path(out_dir)
    train_full, test = split_by_time(generate_sessions(spec), test_days)
    train_tr, train_valid = split_by_time(train_full, test_days)
    frames = {"train_full": train_full, "test": test, "train_tr": train_tr, "train_valid": train_valid}
    with atomic_directory(out, [f"{name}.{fmt}" for name in frames for fmt in formats]) as staging:
        for name, frame in frames.items():
            table = pa.Table.from_pandas(frame, preserve_index=False)
            for fmt in formats:
                _write_table(table, staging / f"{name}.{fmt}", fmt)
    return {name: out / f"{name}.{formats[0]}" for name in frames}
