import numpy as np
import pytest

from gru4rec.datasets.synthetic import DAY, SyntheticSpec, generate_sessions, split_by_time, write_splits


@pytest.mark.parametrize("n_events", [1_000, 50_000])
def test_exact_size_sessions_of_two_or_more_and_time_order(n_events):
    df = generate_sessions(SyntheticSpec(n_events=n_events, seed=3))
    assert len(df) == n_events
    lengths = df.groupby("SessionId").size()
    assert lengths.min() >= 2
    starts = df.groupby("SessionId")["Time"].min().sort_index()
    assert starts.is_monotonic_increasing  # session ids follow start time
    assert (df.groupby("SessionId")["Time"].diff().dropna() >= 0).all()


def test_popularity_is_skewed_and_transitions_are_sparse():
    df = generate_sessions(SyntheticSpec(n_events=200_000, n_items=2_000, seed=1))
    counts = df["ItemId"].value_counts().to_numpy()
    assert counts[:20].sum() > 0.2 * counts.sum()  # Zipf head
    nxt = df.groupby("SessionId")["ItemId"].shift(-1)
    pairs = df.assign(next=nxt).dropna()
    top = pairs.groupby("ItemId")["next"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    assert top.median() > 0.25  # the most likely successor carries much of the mass


def test_time_split_and_files(tmp_path):
    spec = SyntheticSpec(n_events=20_000, seed=2)
    train, test = split_by_time(generate_sessions(spec), days=2)
    boundary = generate_sessions(spec)["Time"].max() - 2 * DAY
    assert train.groupby("SessionId")["Time"].min().max() < boundary
    assert test.groupby("SessionId")["Time"].min().min() >= boundary
    assert set(test["ItemId"]) <= set(train["ItemId"])
    assert not set(test["SessionId"]) & set(train["SessionId"])
    paths = write_splits(tmp_path, spec)
    assert sorted(paths) == ["test", "train_full", "train_tr", "train_valid"]
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
