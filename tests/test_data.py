from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru4rec.data import DataError, SessionData, load_session_data, read_events


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path, "a.tsv", "SessionId\tItem\tTime\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"a\.tsv: missing column 'ItemId'"):
        read_events(path)


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"e\.tsv: the file is empty"):
        read_events(write(tmp_path, "e.tsv", ""))
    with pytest.raises(DataError, match=r"h\.tsv: the file has no events"):
        read_events(write(tmp_path, "h.tsv", "SessionId\tItemId\tTime\n"))


def test_non_numeric_time_names_line(tmp_path):
    path = write(tmp_path, "t.csv", "SessionId,ItemId,Time\n1,5,10\n1,6,11\n2,7,noon\n")
    with pytest.raises(DataError, match=r"t\.csv: column 'Time' is not numeric at line 4.*'noon'"):
        read_events(path)


def test_nan_ids_name_line(tmp_path):
    path = write(tmp_path, "n.tsv", "SessionId\tItemId\tTime\n1\t5\t10\n\t6\t11\n")
    with pytest.raises(DataError, match=r"n\.tsv: column 'SessionId' is empty or NaN at line 3"):
        read_events(path)


def test_sessions_ordered_by_start_events_by_time_stable_and_input_untouched():
    df = pd.DataFrame({
        "SessionId": ["b", "a", "b", "a", "c", "c", "c"],
        "ItemId": [10, 20, 30, 40, 50, 60, 70],
        "Time": [5.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0],
    })
    before = df.copy()
    data = SessionData.from_frame(df)
    pd.testing.assert_frame_equal(df, before)
    ids = np.asarray(data.item_ids)[data.items]
    # a starts at 1, b at 2, c at 4; c's equal timestamps keep file order.
    assert ids.tolist() == [20, 40, 30, 10, 50, 60, 70]
    assert data.offsets.tolist() == [0, 2, 4, 7]
    assert list(data.item_ids) == [10, 20, 30, 40, 50, 60, 70]  # first appearance


def test_wide_session_ids_do_not_overflow():
    big = 2**40
    df = pd.DataFrame({"SessionId": [big + 1, big, big + 1, big], "ItemId": [1, 2, 3, 4], "Time": [0, 1, 2, 3]})
    data = SessionData.from_frame(df)
    assert data.n_sessions == 2 and data.offsets.tolist() == [0, 2, 4]


def test_unknown_items_dropped_and_counted_text_ids_match_int_map(tmp_path):
    train = SessionData.from_frame(pd.DataFrame({"SessionId": [1, 1], "ItemId": [7, 8], "Time": [0, 1]}))
    path = write(tmp_path, "test.tsv", "SessionId\tItemId\tTime\n1\t7\t0\n1\t9\t1\n1\t8\t2\n")
    test = load_session_data(path, train.item_ids)
    assert test.n_dropped == 1
    assert test.items.tolist() == [0, 1]


def test_all_items_unknown_is_an_error(tmp_path):
    train = SessionData.from_frame(pd.DataFrame({"SessionId": [1, 1], "ItemId": [7, 8], "Time": [0, 1]}))
    path = write(tmp_path, "u.tsv", "SessionId\tItemId\tTime\n1\t3\t0\n1\t4\t1\n")
    with pytest.raises(DataError, match=r"u\.tsv: none of the 2 events"):
        load_session_data(path, train.item_ids)


def test_formats_agree(tmp_path):
    df = pd.DataFrame({"SessionId": [3, 3, 1, 1, 1], "ItemId": [5, 6, 6, 7, 5], "Time": [9, 10, 1, 2, 3]})
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_pickle(tmp_path / "d.pkl")
    loaded = [load_session_data(tmp_path / f"d.{ext}", allow_pickle=ext == "pkl")
              for ext in ("tsv", "csv", "parquet", "pkl")]
    for d in loaded[1:]:
        assert d.items.tolist() == loaded[0].items.tolist()
        assert d.offsets.tolist() == loaded[0].offsets.tolist()
        assert [str(x) for x in d.item_ids] == [str(x) for x in loaded[0].item_ids]


def test_files_of_the_official_forms_load(tmp_path):
    """The official run.py reads .pickle with joblib and every other file as TAB-separated text."""
    import joblib
    df = pd.DataFrame({"SessionId": [3, 3, 1, 1, 1], "ItemId": [5, 6, 6, 7, 5], "Time": [9, 10, 1, 2, 3]})
    expected = load_session_data(_write(tmp_path / "d.tsv", df))
    joblib.dump(df, tmp_path / "d.pickle")  # joblib's own format, which pd.read_pickle cannot read
    with pytest.raises(Exception):
        pd.read_pickle(tmp_path / "d.pickle")
    df.to_csv(tmp_path / "events.dat", sep="\t", index=False)
    df.to_csv(tmp_path / "events", sep="\t", index=False)
    for data in (load_session_data(tmp_path / "d.pickle", allow_pickle=True),
                 load_session_data(tmp_path / "events.dat"),
                 load_session_data(tmp_path / "events")):
        assert data.items.tolist() == expected.items.tolist() and data.offsets.tolist() == expected.offsets.tolist()
        assert [str(x) for x in data.item_ids] == [str(x) for x in expected.item_ids]


def test_pickles_need_the_explicit_switch(tmp_path):
    df = pd.DataFrame({"SessionId": [1, 1], "ItemId": [5, 6], "Time": [1, 2]})
    df.to_pickle(tmp_path / "d.pkl")
    with pytest.raises(DataError, match=r"d.pkl: reading a pickle runs code from the file; pass --allow-pickle"):
        load_session_data(tmp_path / "d.pkl")


def _write(path, df):
    df.to_csv(path, sep="\t", index=False)
    return path


RSC15 = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"


@pytest.mark.parametrize("variant", ["as written", "shuffled", "text sessions", "tied integer times"])
@pytest.mark.parametrize("ext", ["tsv", "csv", "parquet"])
def test_arrow_loading_equals_the_dataframe_path(tmp_path, variant, ext):
    """The column-wise Arrow reader (with its no-sort path for ordered files) against `from_frame` on the
    frame `read_events` gives, on real sessions, in orders that need the sort and ties it must keep."""
    df = pd.read_csv(RSC15 / "train_full.tsv", sep="\t", nrows=20_000)
    if variant == "shuffled":
        df = df.sample(frac=1, random_state=1)
    elif variant == "text sessions":
        df = df.assign(SessionId="s" + df.SessionId.astype(str))
    elif variant == "tied integer times":
        df = df.assign(Time=(df.Time // 3600).astype(np.int64))  # many sessions start together
    path = tmp_path / f"events.{ext}"
    if ext == "parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep="," if ext == "csv" else "\t", index=False)
    loaded = load_session_data(path)
    reference = SessionData.from_frame(read_events(path))
    assert loaded.items.dtype == np.int32 and loaded.offsets.dtype == np.int32
    assert np.array_equal(loaded.items, reference.items) and np.array_equal(loaded.offsets, reference.offsets)
    assert loaded.item_ids.equals(reference.item_ids) and loaded.item_ids.dtype == reference.item_ids.dtype
    test = pd.read_csv(RSC15 / "test.tsv", sep="\t")
    test.iloc[:500].to_parquet(tmp_path / "test.parquet")
    mapped = load_session_data(tmp_path / "test.parquet", loaded.item_ids)
    expected = SessionData.from_frame(test.iloc[:500], reference.item_ids)
    assert mapped.n_dropped == expected.n_dropped > 0
    assert np.array_equal(mapped.items, expected.items) and np.array_equal(mapped.offsets, expected.offsets)


def test_bad_files_still_get_the_line_named_by_the_arrow_path(tmp_path):
    path = write(tmp_path, "b.parquet", "")
    pd.DataFrame({"SessionId": [1, 1, 2], "ItemId": [5, None, 7], "Time": [1, 2, 3]}).to_parquet(path)
    with pytest.raises(DataError, match=r"b\.parquet: column 'ItemId' is empty or NaN at line 3"):
        load_session_data(path)
    path = write(tmp_path, "t.tsv", "SessionId\tItemId\tTime\n1\t5\t10\n1\t6\tinf\n")
    with pytest.raises(DataError, match=r"t\.tsv: column 'Time' is empty, NaN or infinite at line 3"):
        load_session_data(path)
