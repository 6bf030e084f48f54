"""Turn the raw logs of six public session datasets into GRU4Rec train/test splits, as the authors' scripts do.

Each `read_<dataset>` function reads one dataset's raw files as distributed and returns its item-view
events with sessions (SessionId, ItemId, Time); `process` then removes consecutive repeats, filters
short sessions and rare items and splits by time; `preprocess` does both and writes `train_full`,
`test`, `train_tr`, `train_valid` and `stats.json`. The rules are those of the GRU4Rec authors'
preprocessing (see the README next to this file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..files import atomic_directory

COLUMNS = ("SessionId", "ItemId", "Time")
SPLITS = ("train_full", "test", "train_tr", "train_valid")
FORMATS = ("tsv", "parquet")
TICKS_PER_SECOND = {"s": 1, "ms": 1000}
SESSION_GAP_S = 3600
DAY_S = 86400
_BLOCK_BYTES = 64 << 20
_PROGRESS_ROWS = 20_000_000

PathLike = str | os.PathLike
Converter = Callable[[pa.Array], pa.Array]


class PreprocessError(ValueError):
    """Bad raw input (missing file or column, unparseable value), with a message naming the file."""


def _say(message: str) -> None:
    """Progress output, flushed at once so long runs show where they are."""
    print(message, flush=True)


# ----------------------------------------------------------------------------------------------
# Reading raw files
# ----------------------------------------------------------------------------------------------

def _resolve(paths: Sequence[PathLike], names: Sequence[str]) -> list[Path]:
    """Expand folders into the dataset's standard file names (plain or .gz) and check every file exists."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            if not names:
                raise PreprocessError(f"{path}: is a folder; give the event files themselves")
            for name in names:
                found = next((c for c in (path / name, path / f"{name}.gz") if c.is_file()), None)
                if found is None:
                    raise PreprocessError(f"{path}: folder has no {name} (nor {name}.gz)")
                files.append(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PreprocessError(f"{path}: file not found")
    return files


def _csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names on the first line of a (possibly compressed) text file."""
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 16)
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig", errors="replace")
    return [name.strip().strip('"') for name in line.split(delimiter)]


def _csv_batches(path: Path, columns: dict[str, pa.DataType], delimiter: str = ",",
                 names: Sequence[str] | None = None) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Yield (batch of the wanted columns, file line of its first row) block by block, then report rows/s.

    `names` means the file has no header line and gives its column names; otherwise the header must
    hold every wanted column. Streaming keeps memory to a few blocks plus what the caller keeps.
    """
    if names is None:
        header = _csv_header(path, delimiter)
        missing = [c for c in columns if c not in header]
        if missing:
            raise PreprocessError(f"{path}: missing column {missing[0]!r} (the header has: {', '.join(header)})")
    first_line = 1 if names is not None else 2
    read_options = pacsv.ReadOptions(block_size=_BLOCK_BYTES, column_names=list(names) if names else None)
    convert_options = pacsv.ConvertOptions(include_columns=list(columns), column_types=columns)
    parse_options = pacsv.ParseOptions(delimiter=delimiter)
    start, rows, next_report = time.perf_counter(), 0, _PROGRESS_ROWS
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pacsv.open_csv(stream, read_options=read_options, parse_options=parse_options,
                                    convert_options=convert_options)
            for batch in reader:
                yield batch, first_line + rows
                rows += batch.num_rows
                if rows >= next_report:
                    _say(f"  {path.name}: {rows:,} rows ({rows / (time.perf_counter() - start):,.0f} rows/s)")
                    next_report += _PROGRESS_ROWS
    except pa.ArrowInvalid as exc:
        raise PreprocessError(f"{path}: {exc}") from exc
    seconds = max(time.perf_counter() - start, 1e-9)
    _say(f"read {path}: {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")


def _converts(values: pa.Array, convert: Converter) -> bool:
    """Whether `convert` turns every value into a non-null result."""
    try:
        return convert(values).null_count == 0
    except (pa.ArrowException, ValueError):
        return False


def _parsed(values: pa.Array, convert: Converter, path: Path, what: str, first_line: int,
            rows: np.ndarray | None = None) -> np.ndarray:
    """Convert a column of raw text, or raise naming the file and the first line that does not parse.

    `rows` maps positions in `values` back to rows of the batch starting at `first_line` (when the
    batch was filtered). The first bad value is found by bisecting on prefixes, so the happy path is
    one vectorised conversion.
    """
    try:
        out = convert(values)
        if out.null_count == 0:
            return out.to_numpy()
    except (pa.ArrowException, ValueError):
        pass
    good, bad = 0, len(values)
    while bad - good > 1:
        mid = (good + bad) // 2
        if _converts(values.slice(0, mid), convert):
            good = mid
        else:
            bad = mid
    index = bad - 1
    row = int(rows[index]) if rows is not None else index
    raise PreprocessError(f"{path}, line {first_line + row}: cannot parse {what} {values[index].as_py()!r}")


def _ints(values: pa.Array, path: Path, what: str, first_line: int, rows: np.ndarray | None = None) -> np.ndarray:
    """An integer column as numpy, refusing empty fields (which would silently become floats)."""
    if values.null_count:
        index = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(rows[index]) if rows is not None else index
        raise PreprocessError(f"{path}, line {first_line + row}: empty {what}")
    return values.to_numpy()


def _iso_utc_us(values: pa.Array) -> pa.Array:
    """ISO-8601 UTC text such as 2014-04-07T10:51:09.277Z to integer microseconds."""
    return pc.cast(pc.cast(values, pa.timestamp("us", tz="UTC")), pa.int64())


def _rees46_seconds(values: pa.Array) -> pa.Array:
    """Rees46 event_time text ('2019-10-01 00:00:04 UTC') to integer seconds."""
    return pc.cast(pc.strptime(values, format="%Y-%m-%d %H:%M:%S UTC", unit="s"), pa.int64())


def _int64(values: pa.Array) -> pa.Array:
    """Decimal integer text to int64."""
    return pc.cast(values, pa.int64())


def _days(values: pa.Array) -> pa.Array:
    """YYYY-MM-DD text to days since 1970-01-01."""
    return pc.cast(pc.cast(values, pa.date32()), pa.int32())


def _bool(mask: pa.Array) -> np.ndarray:
    """An Arrow boolean result as a numpy mask, nulls counting as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _codes(chunks: list[pa.Array]) -> np.ndarray:
    """Integer codes 0, 1, ... of text values in order of first appearance (one dictionary over all chunks)."""
    if not chunks:
        return np.empty(0, np.int64)
    encoded = pc.dictionary_encode(pa.chunked_array(chunks, type=pa.string()))
    return np.concatenate([c.indices.to_numpy().astype(np.int64) for c in encoded.chunks])


def _frame(sessions: np.ndarray, items: np.ndarray, times: np.ndarray) -> pd.DataFrame:
    """The common event table."""
    return pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": times})


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate per-block arrays (an empty array of `dtype` when there are none)."""
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def sessions_by_gap(keys: np.ndarray, times: np.ndarray, gap: float) -> np.ndarray:
    """Session numbers 1, 2, ... per event: a new session starts when the key changes or the time gap is > gap.

    Used where the raw data has users or coarse source sessions instead of sessions; a gap of exactly
    `gap` does not split. Sessions are numbered in (key, time) order; the result follows input order.
    """
    order = np.lexsort((times, keys))
    k, t = keys[order], times[order]
    new = np.ones(len(k), dtype=bool)
    new[1:] = (k[1:] != k[:-1]) | (t[1:] - t[:-1] > gap)
    sessions = np.empty(len(k), dtype=np.int64)
    sessions[order] = np.cumsum(new)
    return sessions


def _yoochoose_files(files: list[Path]) -> pd.DataFrame:
    """Read YOOCHOOSE click files (session,ISO time,item,category; no header) with Time in float seconds."""
    columns = {"session": pa.int64(), "timestamp": pa.string(), "item": pa.int64()}
    sessions, items, times = [], [], []
    for path in files:
        for batch, line in _csv_batches(path, columns, names=("session", "timestamp", "item", "category")):
            sessions.append(_ints(batch["session"], path, "session id", line))
            items.append(_ints(batch["item"], path, "item id", line))
            times.append(_parsed(batch["timestamp"], _iso_utc_us, path, "timestamp", line) / 1e6)
    data = _frame(_concat(sessions, np.int64), _concat(items, np.int64), _concat(times, np.float64))
    _say(f"all clicks kept (sessions given): {len(data):,} rows, {data['SessionId'].nunique():,} sessions")
    return data


def read_rsc15(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Events of yoochoose-clicks.dat (RecSys Challenge 2015) for the older RSC15 pipeline; Time in seconds."""
    return _yoochoose_files(_resolve(paths, ("yoochoose-clicks.dat",)))


def read_yoochoose(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Events of yoochoose-clicks.dat and yoochoose-test.dat concatenated; Time in seconds."""
    return _yoochoose_files(_resolve(paths, ("yoochoose-clicks.dat", "yoochoose-test.dat")))


def read_rees46(paths: Sequence[PathLike]) -> pd.DataFrame:
    """View events of the Rees46 2019-Oct.csv and 2019-Nov.csv, sessions per user with a 1 h gap; Time in seconds.

    The files hold about 110 million rows; they are streamed block by block keeping only view events
    and the three needed columns, so the whole run stays well under 24 GB of memory.
    """
    columns = {"event_time": pa.string(), "event_type": pa.string(), "product_id": pa.int64(), "user_id": pa.int64()}
    users, items, times, total = [], [], [], 0
    for path in _resolve(paths, ("2019-Oct.csv", "2019-Nov.csv")):
        for batch, line in _csv_batches(path, columns):
            total += batch.num_rows
            rows = np.flatnonzero(_bool(pc.equal(batch["event_type"], "view")))
            view = batch.take(pa.array(rows))
            users.append(_ints(view["user_id"], path, "user_id", line, rows))
            items.append(_ints(view["product_id"], path, "product_id", line, rows))
            times.append(_parsed(view["event_time"], _rees46_seconds, path, "event_time", line, rows))
    user, item, t = _concat(users, np.int64), _concat(items, np.int64), _concat(times, np.int64)
    _say(f"after view filter: {len(t):,} of {total:,} rows")
    sessions = sessions_by_gap(user, t, SESSION_GAP_S)
    _say(f"sessions built per user (gap > 1 h on views): {int(sessions.max(initial=0)):,} sessions")
    return _frame(sessions, item, t)


def read_coveo(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Detail events of the Coveo shopper-intent release_10_23_2020.csv; Time in milliseconds.

    The given sessions are re-split with a 1 h gap over all event types before filtering; session and
    SKU hashes become integers (SKUs numbered 0, 1, ... in order of first appearance in the file).
    Either column spelling product_skus_hash or product_sku_hash is accepted.
    """
    hashes, skus, details, times, total = [], [], [], [], 0
    for path in _resolve(paths, ("release_10_23_2020.csv",)):
        header = _csv_header(path, ",")
        sku = "product_sku_hash" if "product_sku_hash" in header and "product_skus_hash" not in header \
            else "product_skus_hash"
        columns = {"session_id_hash": pa.string(), "product_action": pa.string(), sku: pa.string(),
                   "server_timestamp_epoch_ms": pa.string()}
        for batch, line in _csv_batches(path, columns):
            total += batch.num_rows
            hashes.append(batch["session_id_hash"])
            skus.append(batch[sku])
            details.append(_bool(pc.equal(batch["product_action"], "detail")))
            times.append(_parsed(batch["server_timestamp_epoch_ms"], _int64, path, "server_timestamp_epoch_ms", line))
    t = _concat(times, np.int64)
    sessions = sessions_by_gap(_codes(hashes), t, SESSION_GAP_S * 1000)
    _say(f"sessions built per source session (gap > 1 h over all {total:,} events): "
         f"{int(sessions.max(initial=0)):,} sessions")
    has_sku = _concat([_bool(pc.not_equal(s, "")) for s in skus], bool)
    items = np.full(len(t), -1, dtype=np.int64)
    items[has_sku] = _codes([s.filter(pc.not_equal(s, "")) for s in skus])
    keep = _concat(details, bool) & has_sku
    _say(f"after detail filter: {int(keep.sum()):,} of {total:,} rows")
    return _frame(sessions[keep], items[keep], t[keep])


def read_retailrocket(paths: Sequence[PathLike]) -> pd.DataFrame:
    """View events of the RetailRocket events.csv, sessions per visitor with a 1 h gap over all events; Time in ms."""
    columns = {"timestamp": pa.string(), "visitorid": pa.int64(), "event": pa.string(), "itemid": pa.int64()}
    visitors, items, times, views = [], [], [], []
    for path in _resolve(paths, ("events.csv",)):
        for batch, line in _csv_batches(path, columns):
            visitors.append(_ints(batch["visitorid"], path, "visitorid", line))
            items.append(_ints(batch["itemid"], path, "itemid", line))
            times.append(_parsed(batch["timestamp"], _int64, path, "timestamp", line))
            views.append(_bool(pc.equal(batch["event"], "view")))
    t = _concat(times, np.int64)
    sessions = sessions_by_gap(_concat(visitors, np.int64), t, SESSION_GAP_S * 1000)
    _say(f"sessions built per visitor (gap > 1 h over all {len(t):,} events): "
         f"{int(sessions.max(initial=0)):,} sessions")
    keep = _concat(views, bool)
    _say(f"after view filter: {int(keep.sum()):,} of {len(t):,} rows")
    return _frame(sessions[keep], _concat(items, np.int64)[keep], t[keep])


def read_diginetica(paths: Sequence[PathLike]) -> pd.DataFrame:
    """Item views of the Diginetica train-item-views.csv (';'-separated); Time in ms.

    Time = (the session's earliest eventdate as unix seconds) * 1000 + timeframe. The header may be
    spelled sessionId;userId;itemId;timeframe;eventdate or session_id;user_id;item_id;timeframe;eventdate.
    """
    sessions, items, frames, days = [], [], [], []
    for path in _resolve(paths, ("train-item-views.csv",)):
        spelled = {name.replace("_", "").lower(): name for name in _csv_header(path, ";")}
        for wanted in ("sessionId", "itemId", "timeframe", "eventdate"):
            if wanted.lower() not in spelled:
                raise PreprocessError(f"{path}: missing column {wanted!r} (or its snake_case spelling)")
        session, item, frame, date = (spelled[k] for k in ("sessionid", "itemid", "timeframe", "eventdate"))
        columns = {session: pa.int64(), item: pa.int64(), frame: pa.string(), date: pa.string()}
        for batch, line in _csv_batches(path, columns, delimiter=";"):
            sessions.append(_ints(batch[session], path, session, line))
            items.append(_ints(batch[item], path, item, line))
            frames.append(_parsed(batch[frame], _int64, path, frame, line))
            days.append(_parsed(batch[date], _days, path, date, line))
    session_ids = _concat(sessions, np.int64)
    first_day = pd.Series(_concat(days, np.int32)).groupby(session_ids).transform("min").to_numpy(np.int64)
    data = _frame(session_ids, _concat(items, np.int64), first_day * DAY_S * 1000 + _concat(frames, np.int64))
    _say(f"all item views kept (sessions given): {len(data):,} rows, {data['SessionId'].nunique():,} sessions")
    return data


def _text_delimiter(path: Path, sep: str | None) -> str:
    """The delimiter of a generic text file: `sep`, else TAB for .tsv/.txt/.dat and comma for .csv."""
    if sep is not None:
        return sep
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2")]
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix in (".tsv", ".txt", ".dat"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise PreprocessError(f"{path}: cannot tell the delimiter from the file name; pass --sep")


def _float64(values: pa.Array) -> pa.Array:
    """Decimal text to float64."""
    return pc.cast(values, pa.float64())


def _iso_converter(time_unit: str) -> Converter:
    """ISO-8601 date/time text (UTC when no zone is given) to float ticks of `time_unit`; bad values become null."""
    us_per_tick = 1e6 / TICKS_PER_SECOND[time_unit]

    def convert(values: pa.Array) -> pa.Array:
        """Parse with pandas, which accepts every ISO-8601 variant; unparseable values become null."""
        stamps = pd.to_datetime(values.to_numpy(zero_copy_only=False), format="ISO8601", utc=True, errors="coerce")
        bad = np.asarray(stamps.isna())
        ticks = stamps.to_numpy(dtype="datetime64[us]").astype(np.int64) / us_per_tick
        return pa.array(ticks, mask=bad)
    return convert


def _require_values(values: pa.Array, path: Path, what: str, first_line: int) -> None:
    """Refuse empty fields in a generic file's column, naming the first line that has one."""
    empty = values.is_null()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        empty = pc.or_(empty, pc.equal(values, ""))
    if pc.any(empty).as_py():
        index = int(np.flatnonzero(_bool(empty))[0])
        raise PreprocessError(f"{path}, line {first_line + index}: empty {what}")


def _generic_ids(chunks: list[pa.Array]) -> np.ndarray:
    """Ids as int64 when every value is an integer, else as text."""
    if not chunks:
        return np.empty(0, np.int64)
    try:
        return np.concatenate([pc.cast(c, pa.int64()).to_numpy() for c in chunks])
    except (pa.ArrowException, ValueError):
        return np.concatenate([pc.cast(c, pa.string()).to_numpy(zero_copy_only=False) for c in chunks]).astype(object)


def _generic_times(values: pa.Array, path: Path, what: str, first_line: int, time_unit: str,
                   iso: bool) -> np.ndarray:
    """Times of a generic file as float ticks: numbers as they are, timestamps and ISO text in `time_unit`."""
    if pa.types.is_timestamp(values.type):
        unit = pa.timestamp("us", tz=values.type.tz)
        return pc.cast(pc.cast(values, unit), pa.int64()).to_numpy() / (1e6 / TICKS_PER_SECOND[time_unit])
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    return _parsed(values, _iso_converter(time_unit) if iso else _float64, path, what, first_line)


def _parquet_batches(path: Path, columns: list[str]) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Yield (batch, 1-based row number of its first row) of the wanted Parquet columns, then report rows/s."""
    present = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in columns if c not in present]
    if missing:
        raise PreprocessError(f"{path}: missing column {missing[0]!r} (the file has: {', '.join(present)})")
    start, rows = time.perf_counter(), 0
    for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=1 << 20):
        yield batch, rows + 1
        rows += batch.num_rows
    seconds = max(time.perf_counter() - start, 1e-9)
    _say(f"read {path}: {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")


def read_generic(paths: Sequence[PathLike], session_col: str = "SessionId", item_col: str = "ItemId",
                 time_col: str = "Time", sep: str | None = None, time_unit: str = "s") -> pd.DataFrame:
    """Events of any session/item/time files (TSV, CSV or Parquet), several concatenated, sessions as given.

    Times are numbers in `time_unit` ('s' or 'ms'), or ISO-8601 text / Parquet timestamps converted to
    it; whole numbers are kept as integers. Ids stay integers when they all are, text otherwise.
    Error positions in Parquet files count data rows from 1.
    """
    columns = [session_col, item_col, time_col]
    sessions, items, times = [], [], []
    for path in _resolve(paths, ()):
        if path.suffix.lower() in (".parquet", ".pq"):
            blocks = _parquet_batches(path, columns)
        else:
            blocks = _csv_batches(path, {c: pa.string() for c in columns}, delimiter=_text_delimiter(path, sep))
        iso = None
        for batch, line in blocks:
            for column in columns:
                _require_values(batch[column], path, column, line)
            values = batch[time_col]
            if iso is None and len(values):
                iso = pa.types.is_string(values.type) and not _converts(values.slice(0, 1), _float64)
            sessions.append(batch[session_col])
            items.append(batch[item_col])
            times.append(_generic_times(values, path, time_col, line, time_unit, bool(iso)))
    t = _concat(times, np.float64)
    if len(t) and np.all(np.isfinite(t)) and np.all(t == np.round(t)) and np.abs(t).max() < 2 ** 53:
        t = t.astype(np.int64)
    data = _frame(_generic_ids(sessions), _generic_ids(items), t)
    _say(f"all events kept (sessions given): {len(data):,} rows, {data['SessionId'].nunique():,} sessions")
    return data


# ----------------------------------------------------------------------------------------------
# The common pipeline
# ----------------------------------------------------------------------------------------------

def _sizes(values: pd.Series) -> np.ndarray:
    """For every row, how many rows share its value (session length or item support)."""
    codes, _ = pd.factorize(values)
    return np.bincount(codes)[codes]


def _per_session(data: pd.DataFrame, how: str) -> np.ndarray:
    """For every row, the min or max Time of its session."""
    return data["Time"].groupby(pd.factorize(data["SessionId"])[0]).transform(how).to_numpy()


def _sort_key(values: pd.Series) -> np.ndarray:
    """Values usable by np.lexsort: numbers as they are, text as its sorted rank."""
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy()
    return pd.factorize(values, sort=True)[0]


def sort_events(data: pd.DataFrame) -> pd.DataFrame:
    """Events ordered by (SessionId, Time, ItemId), the order every later step and output relies on."""
    order = np.lexsort((_sort_key(data["ItemId"]), data["Time"].to_numpy(), _sort_key(data["SessionId"])))
    return data.iloc[order].reset_index(drop=True)


def drop_consecutive_repeats(data: pd.DataFrame) -> pd.DataFrame:
    """Sort, then drop each event whose session and item equal the previous one's (A-A-B -> A-B; A-B-A stays)."""
    data = sort_events(data)
    s, i = data["SessionId"].to_numpy(), data["ItemId"].to_numpy()
    repeat = np.zeros(len(data), dtype=bool)
    repeat[1:] = (s[1:] == s[:-1]) & (i[1:] == i[:-1])
    return data[~repeat].reset_index(drop=True)


def filter_iterative(data: pd.DataFrame, min_session_length: int = 2, min_item_support: int = 5) -> pd.DataFrame:
    """Drop short sessions, then rare items, and repeat until the event count stops changing."""
    previous, step = -1, 0
    while len(data) != previous:
        previous, step = len(data), step + 1
        data = data[_sizes(data["SessionId"]) >= min_session_length]
        after_sessions = len(data)
        data = data[_sizes(data["ItemId"]) >= min_item_support]
        _say(f"filter pass {step}: {after_sessions:,} rows after dropping sessions shorter than "
             f"{min_session_length}, {len(data):,} after dropping items with support < {min_item_support}")
    return data.reset_index(drop=True)


def filter_once(data: pd.DataFrame, min_session_length: int = 2, min_item_support: int = 5) -> pd.DataFrame:
    """The RSC15 filter: one pass of short sessions, rare items, then short sessions again."""
    data = data[_sizes(data["SessionId"]) >= min_session_length]
    _say(f"after dropping sessions shorter than {min_session_length}: {len(data):,} rows")
    data = data[_sizes(data["ItemId"]) >= min_item_support]
    _say(f"after dropping items with support < {min_item_support}: {len(data):,} rows")
    data = data[_sizes(data["SessionId"]) >= min_session_length]
    _say(f"after dropping sessions shorter than {min_session_length} again: {len(data):,} rows")
    return data.reset_index(drop=True)


def split_by_session_start(data: pd.DataFrame, boundary: float,
                           min_session_length: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): test = whole sessions starting at or after `boundary`; train = events before it.

    A session starting before the boundary loses its later events (they land in neither part); train
    sessions left shorter than `min_session_length` are dropped. The test part is not filtered.
    """
    test = data[_per_session(data, "min") >= boundary]
    train = data[data["Time"].to_numpy() < boundary]
    train = train[_sizes(train["SessionId"]) >= min_session_length]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def split_by_session_end(data: pd.DataFrame, window: float,
                         min_session_length: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) by the RSC15 rule: sessions ending before max(Time) - window train, the others test.

    The test part keeps only items seen in train, then sessions of at least `min_session_length` events.
    """
    send = _per_session(data, "max")
    cut = data["Time"].max() - window
    train, test = data[send < cut], data[send >= cut]
    test = test[test["ItemId"].isin(train["ItemId"].unique()).to_numpy()]
    test = test[_sizes(test["SessionId"]) >= min_session_length]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _iso(ticks: float, time_unit: str) -> str:
    """A time in `time_unit` ticks as ISO-8601 UTC, with milliseconds only when it has them."""
    ms = int(round(float(ticks) * 1000 / TICKS_PER_SECOND[time_unit]))
    stamp = pd.Timestamp(ms, unit="ms", tz="UTC")
    return stamp.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


def split_stats(data: pd.DataFrame, time_unit: str) -> dict:
    """Events, sessions, items, first/last time (ISO), days spanned and session length min/max/mean of a split."""
    if data.empty:
        return {"events": 0, "sessions": 0, "items": 0, "first": None, "last": None, "days": 0.0,
                "session_length_min": None, "session_length_max": None, "session_length_mean": None}
    lengths = np.bincount(pd.factorize(data["SessionId"])[0])
    first, last = data["Time"].min(), data["Time"].max()
    return {
        "events": int(len(data)),
        "sessions": int(len(lengths)),
        "items": int(data["ItemId"].nunique()),
        "first": _iso(first, time_unit),
        "last": _iso(last, time_unit),
        "days": round(float(last - first) / (DAY_S * TICKS_PER_SECOND[time_unit]), 4),
        "session_length_min": int(lengths.min()),
        "session_length_max": int(lengths.max()),
        "session_length_mean": round(float(lengths.mean()), 4),
    }


def _stats_line(name: str, stats: dict) -> str:
    """One printed line of split statistics."""
    if not stats["events"]:
        return f"{name:<12} empty"
    return (f"{name:<12} events={stats['events']:,} sessions={stats['sessions']:,} items={stats['items']:,} "
            f"time=[{stats['first']} .. {stats['last']}] days={stats['days']:.2f} session length "
            f"min/max/mean={stats['session_length_min']}/{stats['session_length_max']}/"
            f"{stats['session_length_mean']:.2f}")


@dataclass(frozen=True)
class Rules:
    """How a dataset's events are filtered and split; times (`tsplit`) are in `time_unit` ticks."""

    time_unit: str = "s"              # "s" or "ms": the unit of the Time column
    window_days: float = 1.0          # T, the test and validation window
    tsplit: float | None = None       # fixed split time, or None for the last timestamp (split "start")
    split: str = "start"              # "start": by session start (common); "end": by session end (RSC15)
    filter: str = "iterative"         # "iterative" until stable, or "once" (RSC15)
    drop_repeats: bool = True         # drop consecutive repeats of an item within a session
    min_session_length: int = 2
    min_item_support: int = 5

    def window(self) -> float:
        """The split window T in time ticks."""
        return self.window_days * DAY_S * TICKS_PER_SECOND[self.time_unit]


def process(data: pd.DataFrame, rules: Rules) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Repeat removal, filtering and the test and validation splits of events that already have sessions.

    Returns the four splits and the two split times used (ISO), for the record in stats.json.
    """
    if rules.drop_repeats:
        data = drop_consecutive_repeats(data)
        _say(f"after removing consecutive repeats: {len(data):,} rows")
    else:
        data = sort_events(data)
    filtering = filter_iterative if rules.filter == "iterative" else filter_once
    data = filtering(data, rules.min_session_length, rules.min_item_support)
    if data.empty:
        raise PreprocessError("no events left after filtering; nothing to split")
    _say(f"after filtering: {len(data):,} rows, {data['SessionId'].nunique():,} sessions, "
         f"{data['ItemId'].nunique():,} items")
    window, unit, length = rules.window(), rules.time_unit, rules.min_session_length
    if rules.split == "end":
        test_cut = data["Time"].max() - window
        train_full, test = split_by_session_end(data, window, length)
        valid_cut = train_full["Time"].max() - window if len(train_full) else test_cut - window
        train_tr, train_valid = split_by_session_end(train_full, window, length)
        rule = "sessions ending at or after"
    else:
        tsplit = data["Time"].max() if rules.tsplit is None else rules.tsplit
        test_cut, valid_cut = tsplit - window, tsplit - 2 * window
        train_full, test = split_by_session_start(data, test_cut, length)
        train_tr, train_valid = split_by_session_start(train_full, valid_cut, length)
        rule = "sessions starting at or after"
    boundaries = {"test_boundary": _iso(test_cut, unit), "valid_boundary": _iso(valid_cut, unit)}
    _say(f"test = {rule} {boundaries['test_boundary']}: train_full {len(train_full):,} rows, test {len(test):,} rows")
    _say(f"train_valid = {rule} {boundaries['valid_boundary']}: train_tr {len(train_tr):,} rows, "
         f"train_valid {len(train_valid):,} rows")
    return {"train_full": train_full, "test": test, "train_tr": train_tr, "train_valid": train_valid}, boundaries


def _write_table(data: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write SessionId, ItemId, Time as TAB-separated text with a header, or as Parquet."""
    table = pa.Table.from_pandas(data[list(COLUMNS)], preserve_index=False)
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    with pa.OSFile(str(path), "wb") as sink:
        sink.write("\t".join(COLUMNS).encode() + b"\n")
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))


def write_splits(splits: dict[str, pd.DataFrame], out_dir: PathLike, fmt: str, stats: dict) -> list[Path]:
    """Write every split and stats.json into a staging folder that then replaces OUT_DIR as a whole.

    A failure part-way, or a crash, never leaves a half-written output or old and new splits mixed.
    """
    out = Path(out_dir)
    names = [f"{name}.{fmt}" for name in splits] + ["stats.json"]
    with atomic_directory(out, names) as staging:
        for name, data in splits.items():
            _write_table(data, staging / f"{name}.{fmt}", fmt)
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return [out / name for name in names]


READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "rsc15": read_rsc15,
    "yoochoose": read_yoochoose,
    "rees46": read_rees46,
    "coveo": read_coveo,
    "retailrocket": read_retailrocket,
    "diginetica": read_diginetica,
    "generic": read_generic,
}

RULES: dict[str, Rules] = {
    "rsc15": Rules("s", 1.0, None, split="end", filter="once", drop_repeats=False),
    "yoochoose": Rules("s", 1.0, None),
    "rees46": Rules("s", 1.0, 1575158400),
    "coveo": Rules("ms", 1.0, None),
    "retailrocket": Rules("ms", 7.0, 1442545200000),
    "diginetica": Rules("ms", 7.0, None),
    "generic": Rules(),
}


def preprocess(dataset: str, paths: Sequence[PathLike], out_dir: PathLike, fmt: str = "tsv",
               rules: Rules | None = None, **read_options: str | None) -> dict:
    """Read a dataset's raw files, run the pipeline, write the four splits and stats.json; return the stats.

    `rules` overrides the dataset's published rules (meant for `generic`); `read_options` go to
    `read_generic` (column names, separator, time unit).
    """
    if dataset not in READERS:
        raise PreprocessError(f"unknown dataset {dataset!r}; choose one of {', '.join(READERS)}")
    if fmt not in FORMATS:
        raise PreprocessError(f"unknown format {fmt!r}; choose tsv or parquet")
    rules = rules or RULES[dataset]
    started = time.perf_counter()
    splits, boundaries = process(READERS[dataset](paths, **read_options), rules)
    per_split = {name: split_stats(data, rules.time_unit) for name, data in splits.items()}
    stats = {"dataset": dataset, "time_unit": rules.time_unit, "split": rules.split,
             "window_days": rules.window_days, **boundaries, "splits": per_split}
    written = write_splits(splits, out_dir, fmt, stats)
    for name in SPLITS:
        _say(_stats_line(name, per_split[name]))
    _say(f"wrote {', '.join(p.name for p in written)} to {Path(out_dir)} in {time.perf_counter() - started:.1f} s")
    return stats


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

_DESCRIPTION = """\
Preprocess a public session dataset from its raw files into GRU4Rec splits: OUT_DIR/train_full, test,
train_tr, train_valid (.tsv TAB-separated with header SessionId ItemId Time, or .parquet) and
OUT_DIR/stats.json. RAW_PATH is a raw file, several files, or a folder holding the standard names.

datasets (raw input -> events kept, sessions, time unit, test split):
  rsc15         yoochoose-clicks.dat -> all clicks, given sessions, s; older GRU4Rec variant: no repeat
                removal, one filtering pass, sessions ending in the last day are test (test keeps only
                train items)
  yoochoose     yoochoose-clicks.dat + yoochoose-test.dat -> all clicks, given sessions, s; T = 1 day
  rees46        2019-Oct.csv + 2019-Nov.csv -> view events, per user with a 1 h gap between views, s;
                tsplit = 2019-12-01 00:00 UTC, T = 1 day
  coveo         release_10_23_2020.csv -> detail events, given sessions re-split with a 1 h gap over
                all events, ms; T = 1 day
  retailrocket  events.csv -> view events, per visitor with a 1 h gap over all events, ms;
                tsplit = 2015-09-18 03:00 UTC, T = 7 days
  diginetica    train-item-views.csv -> all views, given sessions, ms; T = 7 days
  generic       any SessionId/ItemId/Time file(s) (.tsv/.txt/.dat, .csv, .parquet); rules set by the
                options below (defaults: the common pipeline with T = 1 day)

Common pipeline: sort by (session, time, item) and drop consecutive repeats; drop one-event sessions
then items with < 5 events until nothing changes; tsplit = last timestamp unless fixed above;
test = sessions starting at or after tsplit - T; train_full = events before tsplit - T (then one-event
sessions dropped); train_tr / train_valid the same one window earlier inside train_full.
"""


def _configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of the preprocess command (shared by `gru4rec preprocess` and `python -m`)."""
    parser.add_argument("dataset", choices=list(READERS), metavar="DATASET",
                        help=f"one of: {', '.join(READERS)}")
    parser.add_argument("raw_paths", nargs="+", metavar="RAW_PATH",
                        help="raw file(s), or a folder holding the dataset's standard file names (plain or .gz)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the splits and stats.json (created if missing)")
    parser.add_argument("--format", choices=FORMATS, default="tsv",
                        help="output file format: tsv (TAB-separated with header) or parquet (default: tsv)")
    generic = parser.add_argument_group("options of the generic dataset (refused with the named datasets, "
                                        "whose rules are fixed)")
    generic.add_argument("--session-col", default=None, help="session id column (default: SessionId)")
    generic.add_argument("--item-col", default=None, help="item id column (default: ItemId)")
    generic.add_argument("--time-col", default=None, help="time column (default: Time)")
    generic.add_argument("--sep", default=None,
                         help="field separator of text input (default: TAB for .tsv/.txt/.dat, comma for .csv)")
    generic.add_argument("--time-unit", choices=tuple(TICKS_PER_SECOND), default=None,
                         help="unit of the time column (it sets the window length, how --tsplit is read and the "
                              "dates in stats.json); ISO-8601 text and Parquet timestamps are converted to it "
                              "(default: s)")
    generic.add_argument("--min-item-support", type=int, default=None,
                         help="drop items with fewer events than this (default: 5)")
    generic.add_argument("--min-session-length", type=int, default=None,
                         help="drop sessions with fewer events than this: when filtering, after cutting train "
                              "at a split, and (with --split end) in the test part (default: 2)")
    generic.add_argument("--drop-repeats", action=argparse.BooleanOptionalAction, default=None,
                         help="drop an event repeating the previous item of its session (default: drop)")
    generic.add_argument("--filter", choices=("iterative", "once"), default=None,
                         help="iterative: repeat session and item filters until stable; once: the RSC15 single "
                              "pass (default: iterative)")
    generic.add_argument("--split", choices=("start", "end"), default=None,
                         help="start: test = sessions starting at or after tsplit - T (common pipeline); end: "
                              "test = sessions ending at or after the last timestamp - T, restricted to train "
                              "items (RSC15) (default: start)")
    generic.add_argument("--window-days", type=float, default=None,
                         help="the test (and validation) window T in days (default: 1)")
    generic.add_argument("--tsplit", default=None,
                         help="split time for --split start, as a number in the time unit or an ISO-8601 "
                              "date/time taken as UTC when it has no zone (default: the last timestamp)")


_GENERIC_OPTIONS = ("session_col", "item_col", "time_col", "sep", "time_unit", "min_item_support",
                    "min_session_length", "drop_repeats", "filter", "split", "window_days", "tsplit")


def _tsplit_ticks(text: str, time_unit: str) -> float:
    """--tsplit as time ticks: a plain number, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(text)
    except ValueError as exc:
        raise PreprocessError(f"--tsplit {text!r}: neither a number nor an ISO-8601 date/time") from exc
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return stamp.timestamp() * TICKS_PER_SECOND[time_unit]


def _generic_setup(args: argparse.Namespace) -> tuple[Rules, dict]:
    """Rules and read options of the generic dataset from the command line, checked for consistency."""
    unit = args.time_unit or "s"
    split = args.split or "start"
    if split == "end" and args.tsplit is not None:
        raise PreprocessError("--tsplit applies only to --split start")
    for option in ("min_item_support", "min_session_length"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise PreprocessError(f"--{option.replace('_', '-')} must be at least 1")
    if args.window_days is not None and args.window_days <= 0:
        raise PreprocessError("--window-days must be positive")
    rules = Rules(time_unit=unit, split=split,
                  window_days=1.0 if args.window_days is None else args.window_days,
                  tsplit=None if args.tsplit is None else _tsplit_ticks(args.tsplit, unit),
                  filter=args.filter or "iterative",
                  drop_repeats=True if args.drop_repeats is None else args.drop_repeats,
                  min_session_length=args.min_session_length or 2,
                  min_item_support=args.min_item_support or 5)
    read_options = {"session_col": args.session_col or "SessionId", "item_col": args.item_col or "ItemId",
                    "time_col": args.time_col or "Time", "sep": args.sep, "time_unit": unit}
    return rules, read_options


def run_preprocess(args: argparse.Namespace) -> int:
    """Handler of the preprocess command: 0 on success, 2 with a one-line error on bad input."""
    try:
        if args.dataset == "generic":
            rules, read_options = _generic_setup(args)
        else:
            given = [f"--{o.replace('_', '-')}" for o in _GENERIC_OPTIONS if getattr(args, o) is not None]
            if given:
                raise PreprocessError(f"{', '.join(given)}: for the generic dataset only; "
                                      f"{args.dataset} uses its published rules")
            rules, read_options = RULES[args.dataset], {}
        preprocess(args.dataset, args.raw_paths, args.out_dir, args.format, rules, **read_options)
    except (PreprocessError, OSError) as exc:
        print(f"gru4rec preprocess: error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `preprocess` subcommand on the gru4rec command line."""
    parser = subparsers.add_parser("preprocess", help="turn a public dataset's raw files into GRU4Rec splits",
                                   description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(parser)
    parser.set_defaults(func=run_preprocess)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gru4rec.datasets.preprocess DATASET RAW_PATH [RAW_PATH ...] OUT_DIR [options]`."""
    parser = argparse.ArgumentParser(prog="python -m gru4rec.datasets.preprocess", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(parser)
    return run_preprocess(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
