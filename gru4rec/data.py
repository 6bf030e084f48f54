"""Reading session event files into compact arrays: item indices, session offsets and the item map."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .batching import index_dtype

SESSION_KEY, ITEM_KEY, TIME_KEY = "SessionId", "ItemId", "Time"


class DataError(ValueError):
    """An input file or frame cannot be used; the message names the file and the column or line."""


PICKLE_SUFFIXES = (".pickle", ".pkl")


def read_events(path: str | os.PathLike, session_key: str = SESSION_KEY, item_key: str = ITEM_KEY,
                time_key: str = TIME_KEY, allow_pickle: bool = False) -> pd.DataFrame:
    """Read an event file with the three columns: .csv comma-separated, .parquet, a pickled DataFrame
    (.pickle/.pkl, written by pandas or joblib; only with `allow_pickle`), anything else TAB-separated
    (as the official run.py reads every file that is not a pickle).

    Item ids from text files are kept as strings so that ids are compared exactly as written.
    Unpickling runs code from the file, hence the explicit switch.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    columns = [session_key, item_key, time_key]
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise DataError(f"{path}: reading a pickle runs code from the file; pass --allow-pickle if you trust it "
                        "(or convert it to .tsv or .parquet)")
    try:
        if suffix == ".parquet":
            _check_columns(path, pq.read_schema(path).names, columns)
            df = pd.read_parquet(path, columns=columns)
        elif suffix in PICKLE_SUFFIXES:
            import joblib  # reads joblib dumps (as the official run.py writes and reads them) and plain pickles
            df = joblib.load(path)
            if not isinstance(df, pd.DataFrame):
                raise DataError(f"{path}: the pickle holds a {type(df).__name__}, not a DataFrame")
            _check_columns(path, df.columns, columns)
            df = df[columns]
        else:
            sep = "," if suffix == ".csv" else "\t"
            header = pd.read_csv(path, sep=sep, nrows=0).columns
            _check_columns(path, header, columns)
            df = pd.read_csv(path, sep=sep, usecols=columns, dtype={item_key: str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except DataError:
        raise
    except Exception as e:  # parsers raise many types; report them with the file name
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    validate_events(df, str(path), session_key, item_key, time_key)
    return df


def _check_columns(source: Path | str, present, needed: list[str]) -> None:
    missing = [c for c in needed if c not in set(present)]
    if missing:
        raise DataError(f"{source}: missing column {missing[0]!r} (columns present: {', '.join(map(str, present))}); "
                        "set the column names with -sk/-ik/-tk")


def validate_events(df: pd.DataFrame, source: str, session_key: str = SESSION_KEY, item_key: str = ITEM_KEY,
                    time_key: str = TIME_KEY) -> None:
    """Check the columns of an event frame: present, no missing ids, numeric time; name the first bad line."""
    _check_columns(source, df.columns, [session_key, item_key, time_key])
    if len(df) == 0:
        raise DataError(f"{source}: the file has no events")
    for key in (session_key, item_key):
        bad = df[key].isna().to_numpy()
        if bad.any():
            raise DataError(f"{source}: column {key!r} is empty or NaN at {_line_of(df, bad)}")
    time = df[time_key]
    if not (pd.api.types.is_numeric_dtype(time) or pd.api.types.is_datetime64_any_dtype(time)) \
            or pd.api.types.is_bool_dtype(time):
        numeric = pd.to_numeric(time, errors="coerce")
        raise DataError(f"{source}: column {time_key!r} is not numeric at {_line_of(df, numeric.isna().to_numpy())}"
                        f" (value {time.iloc[int(np.argmax(numeric.isna().to_numpy()))]!r})")
    if pd.api.types.is_numeric_dtype(time):
        bad = ~np.isfinite(time.to_numpy(dtype=np.float64))
        if bad.any():
            raise DataError(f"{source}: column {time_key!r} is empty, NaN or infinite at {_line_of(df, bad)} "
                            f"(value {time.iloc[int(np.argmax(bad))]!r})")
    elif time.isna().any():
        raise DataError(f"{source}: column {time_key!r} is empty (NaT) at {_line_of(df, time.isna().to_numpy())}")


def _line_of(df: pd.DataFrame, bad: np.ndarray) -> str:
    """'line N' of the first bad row, counting the header as line 1 of a text file."""
    row = int(np.argmax(bad))
    return f"line {row + 2} (data row {row + 1})"


def _time_values(time: pd.Series) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(time):
        return time.to_numpy().astype("datetime64[ns]").astype(np.int64) / 1e9
    return time.to_numpy(dtype=np.float64)


@dataclass
class SessionData:
    """Events as compact arrays, sessions ordered by start time and events by time within a session.

    `items[offsets[s]:offsets[s+1]]` are the item indices of session s; `item_ids[i]` is the id of index i.
    """

    items: np.ndarray
    offsets: np.ndarray
    item_ids: pd.Index
    n_dropped: int = 0
    source: str = "data"

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_pairs(self) -> int:
        """(input, next item) pairs: a session of n events gives n - 1."""
        return self.n_events - self.n_sessions

    def check_schedule(self, batch_size: int, purpose: str, budget: int = 1 << 26) -> None:
        """One-line errors for data the session-parallel schedule cannot use, before memory is spent on it.

        The schedule holds (steps x batch_size) slots, and there are at least as many steps as the longest
        session has events: a giant session (a wrong session column, say) would fill memory with padding.
        """
        if self.n_pairs == 0:
            raise DataError(f"{self.source}: every session has a single event, so there is nothing to {purpose}")
        longest = int(np.diff(self.offsets).max())
        slots = max(longest - 1, -(-self.n_pairs // batch_size)) * batch_size
        if slots > budget and slots > 8 * self.n_pairs:
            raise DataError(f"{self.source}: the longest session has {longest:,} events of {self.n_events:,}; "
                            f"batches of {batch_size} would need {slots:,} slots for {self.n_pairs:,} pairs. "
                            "Is the session column (-sk) right?")

    def item_counts(self) -> np.ndarray:
        """Number of events of each item index (its support in this data)."""
        return np.bincount(self.items, minlength=self.n_items)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, item_ids: pd.Index | None = None, session_key: str = SESSION_KEY,
                   item_key: str = ITEM_KEY, time_key: str = TIME_KEY, source: str = "data") -> "SessionData":
        """Build the arrays from an event frame without modifying it.

        With `item_ids` (a training item map) events of unknown items are dropped and counted;
        without it the item map is the items in order of first appearance.
        """
        validate_events(df, source, session_key, item_key, time_key)
        if item_ids is None:
            codes, uniques = pd.factorize(df[item_key])
            item_ids = pd.Index(uniques)
        else:
            codes = _lookup(item_ids, df[item_key])
        sessions = pa.array(pd.factorize(df[session_key], sort=True)[0])
        return _arrange(codes, sessions, lambda: pa.array(_time_values(df[time_key])), item_ids, source)


Column = pa.Array | pa.ChunkedArray


def _arrange(codes: np.ndarray, sessions: Column, read_time: Callable[[], Column], item_ids: pd.Index,
             source: str) -> SessionData:
    """SessionData from per-event item codes (-1: unknown, dropped), session ids and times (float seconds,
    read only once the session ids are no longer needed): sessions ordered by start time (then id), events
    by time, ties keeping file order. Files already in that order (as `preprocess` and `generate` write
    them) are taken as they are, with no sort and no per-event copy of the ids or times.
    """
    if sessions.null_count:
        raise _Unchecked("session column")
    keep = codes >= 0
    n_dropped = len(codes) - int(np.count_nonzero(keep))
    mask = None
    if n_dropped:
        mask = pa.array(keep)
        codes, sessions = codes[keep], sessions.filter(mask)
    del keep
    if len(codes) == 0:
        raise DataError(f"{source}: none of the {n_dropped} events has an item of the training item map")
    n = len(codes)
    boundaries = np.flatnonzero(_to_numpy(pc.not_equal(sessions.slice(1), sessions.slice(0, n - 1)))) + 1
    firsts = np.concatenate(([0], boundaries))
    # Each run of equal ids gets its session's number in the order of the ids (a sorted factorisation).
    run_session = _to_numpy(pc.rank(sessions.take(firsts), sort_keys="ascending", tiebreaker="dense")) - 1
    n_sessions = int(run_session.max()) + 1
    del sessions
    _release()
    time = read_time()
    if mask is not None:
        time = time.filter(mask)
    rising = _to_numpy(pc.greater_equal(time.slice(1), time.slice(0, n - 1)))
    rising[boundaries - 1] = True
    start = _to_numpy(time.take(firsts))
    ordered = (len(firsts) == n_sessions and bool(rising.all())
               and bool(((start[1:] > start[:-1]) | ((start[1:] == start[:-1])
                                                      & (run_session[1:] > run_session[:-1]))).all()))
    del rising, start
    item_dtype = index_dtype(len(item_ids))  # the padding index n_items must fit too
    if ordered:
        items = codes.astype(item_dtype, copy=False)
    else:
        session = np.repeat(run_session, np.diff(np.append(firsts, n)))
        time = _to_numpy(time)
        start = np.full(n_sessions, np.inf)
        np.minimum.at(start, session, time)
        order = np.lexsort((time, session, start[session]))
        del start, time
        items = codes[order].astype(item_dtype, copy=False)
        session = session[order]
        del order
        boundaries = np.flatnonzero(session[1:] != session[:-1]) + 1
    offsets = np.empty(len(boundaries) + 2, dtype=index_dtype(n))
    offsets[0], offsets[1:-1], offsets[-1] = 0, boundaries, n
    return SessionData(items=items, offsets=offsets, item_ids=item_ids, n_dropped=n_dropped, source=source)


def _to_numpy(values: Column) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values.to_numpy()


def _lookup(item_ids: pd.Index, column: pd.Series) -> np.ndarray:
    """Indices of `column` values in the item map (-1 where unknown), matching ids written as text too."""
    values = column
    if _is_text(item_ids) and not _is_text(values):
        values = values.astype(str)
    elif not _is_text(item_ids) and _is_text(values):
        item_ids = item_ids.astype(str)
    return item_ids.get_indexer(values)


def _is_text(values: pd.Index | pd.Series) -> bool:
    return pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)


def load_session_data(path: str | os.PathLike, item_ids: pd.Index | None = None, session_key: str = SESSION_KEY,
                      item_key: str = ITEM_KEY, time_key: str = TIME_KEY, allow_pickle: bool = False) -> SessionData:
    """Read an event file and build its SessionData (the file formats of `read_events`).

    Parquet and text files are read column by column with Arrow, without a DataFrame or a Python
    object per event; a file that does not pass its checks there is read again by `read_events`,
    whose errors name the bad column and line.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() not in PICKLE_SUFFIXES:
        try:
            return _from_arrow(path, item_ids, session_key, item_key, time_key)
        except (pa.ArrowException, KeyError, _Unchecked):
            pass
        finally:
            _release()  # what the reader held, now that it is gone
    df = read_events(path, session_key, item_key, time_key, allow_pickle)
    return SessionData.from_frame(df, item_ids, session_key, item_key, time_key, source=str(path))


class _Unchecked(Exception):
    """A column the Arrow path does not check in detail: the file is read by `read_events` for its error."""


def _from_arrow(path: Path, item_ids: pd.Index | None, session_key: str, item_key: str,
                time_key: str) -> SessionData:
    """SessionData straight from Arrow columns, each released once used; `_Unchecked` where a check fails."""
    column = _arrow_columns(path, [session_key, item_key, time_key], text=item_key)
    item_column = column(item_key)
    if item_column.null_count or len(item_column) == 0:
        raise _Unchecked(item_key)
    if item_ids is None:
        item_codes, dictionary = _dictionary_codes(item_column)
        item_ids = pd.Index(dictionary.to_pandas())
    else:
        item_codes = _lookup(item_ids, item_column.to_pandas())
    del item_column
    _release()

    def read_time() -> Column:
        time = column(time_key)
        if time.null_count or not (pa.types.is_integer(time.type) or pa.types.is_floating(time.type)):
            raise _Unchecked(time_key)
        if pa.types.is_floating(time.type) and not pc.all(pc.is_finite(time)).as_py():
            raise _Unchecked(time_key)
        return pc.cast(time, pa.float64())

    return _arrange(item_codes, column(session_key), read_time, item_ids, str(path))


def _arrow_columns(path: Path, names: list[str], text: str) -> Callable[[str], pa.ChunkedArray]:
    """A function giving each named column once: of a Parquet file read only when asked for (so one column is
    decoded at a time), of a text file read as `read_events` reads it (column `text` kept as text)."""
    if path.suffix.lower() == ".parquet":
        file = pq.ParquetFile(path)
        missing = set(names) - set(file.schema_arrow.names)
        if missing:
            raise KeyError(missing.pop())
        return lambda name: file.read(columns=[name]).column(0)
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                           convert_options=pacsv.ConvertOptions(include_columns=names,
                                                                column_types={text: pa.string()}))
    return {name: table.column(name) for name in names}.pop


def _release() -> None:
    """Give the memory of the columns already used back to the system (Arrow's allocator keeps it otherwise)."""
    pa.default_memory_pool().release_unused()


def _dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Codes of the values in order of first appearance (int32, as Arrow encodes them) and the distinct values."""
    encoded = pc.dictionary_encode(column)
    codes = np.concatenate([chunk.indices.to_numpy() for chunk in encoded.chunks])
    return codes, encoded.chunk(0).dictionary
