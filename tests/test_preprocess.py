"""Tests of the dataset preprocessing pipelines on small raw files written in each dataset's own format."""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru4rec.datasets import preprocess as pp

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DAY = 86400
HOUR = 3600
A, B, C, D, E, R, Q, X = 101, 102, 103, 104, 105, 106, 107, 108


@dataclass(frozen=True)
class Event:
    """One hand-placed event: `label` names it in expectations, `session` is the raw session (or user)."""

    label: str
    session: str
    sid: int
    item: int
    t: int
    view: bool = True


def build(sessions: list[tuple[str, int, list[tuple]]]) -> list[Event]:
    """Events from (session name, anchor time, [(item, offset[, is_view]), ...]); times must all differ."""
    events = []
    for sid, (name, anchor, steps) in enumerate(sessions, start=1):
        for index, (item, offset, *view) in enumerate(steps):
            events.append(Event(f"{name}.{index}", name, sid, item, anchor + offset, view[0] if view else True))
    assert len({e.t for e in events}) == len(events), "scenario times must be unique"
    return events


# ----------------------------------------------------------------------------------------------
# The scenario of the common pipeline (Yoochoose, Rees46, Coveo, RetailRocket, Diginetica)
# ----------------------------------------------------------------------------------------------

def common_scenario(tsplit: int, window: int, last: int) -> list[Event]:
    """Sessions exercising every step; b = tsplit - T is the test boundary, b2 = tsplit - 2T the validation one.

    Item supports (given sessions): A 11, B 7, C 6, D 7, E 6; R 5 and Q 1 before the cascade.
    """
    b, b2 = tsplit - window, tsplit - 2 * window
    early = [
        ("dup", [(A, 0), (A, 10), (B, 20), (A, 30)]),       # A-A-B-A -> A-B-A
        ("short", [(C, 0)]),                                 # one event: dropped
        ("casc", [(R, 0), (Q, 10)]),                         # Q rare -> session too short -> R falls to 4
        ("ra", [(R, 0), (A, 10), (B, 20)]),
        ("rb", [(R, 0), (C, 10), (D, 20)]),
        ("rc", [(R, 0), (D, 10), (E, 20)]),
        ("rd", [(R, 0), (E, 10), (A, 20)]),
        ("gap", [(A, 0), (B, 3600), (C, 7201), (D, 7202)]),  # gap of exactly 1 h, then of 1 h + 1 s
        ("bridge", [(D, 0), (E, 3000, False), (A, 6000), (B, 6010)]),  # a non-view event inside a 6000 s gap
    ]
    # Early sessions lie 4 days apart, reaching back into October for Rees46.
    sessions = [(name, b2 - 40 * HOUR - k * 4 * DAY, steps) for k, (name, steps) in enumerate(early)]
    sessions += [
        ("vcut", b2, [(A, -600), (C, -300), (D, 0)]),           # straddles b2, one event exactly at b2
        ("vin", b2, [(B, 60), (C, 120), (E, 180)]),             # starts after b2: validation
        ("vone", b2, [(E, -100), (A, 100)]),                    # one event before b2
        ("tcut", b, [(A, -1800), (B, -900), (C, 300), (D, 600)]),  # straddles b
        ("tone", b, [(C, -60), (E, 60)]),                       # one event before b
        ("tat", b, [(D, 0), (E, 30), (A, 90)]),                 # starts exactly at b: test
        ("tlast", last, [(B, -60), (A, 0)]),
    ]
    return build(sessions)


EARLY = [["dup.0", "dup.2", "dup.3"], ["ra.1", "ra.2"], ["rb.1", "rb.2"], ["rc.1", "rc.2"], ["rd.1", "rd.2"]]
GAP = {"given": [["gap.0", "gap.1", "gap.2", "gap.3"]], "split": [["gap.0", "gap.1"], ["gap.2", "gap.3"]]}
BRIDGE = {"all": [["bridge.0", "bridge.2", "bridge.3"]], "views": [["bridge.2", "bridge.3"]]}


def expected_common(gap: str, bridge: str) -> dict[str, list[list[str]]]:
    """The four splits worked out by hand; `gap`/`bridge` pick how the dataset builds those sessions."""
    before_b2 = EARLY + GAP[gap] + BRIDGE[bridge]
    return {
        "train_full": before_b2 + [["vcut.0", "vcut.1", "vcut.2"], ["vin.0", "vin.1", "vin.2"],
                                   ["vone.0", "vone.1"], ["tcut.0", "tcut.1"]],
        "test": [["tat.0", "tat.1", "tat.2"], ["tlast.0", "tlast.1"]],
        "train_tr": before_b2 + [["vcut.0", "vcut.1"]],
        "train_valid": [["vin.0", "vin.1", "vin.2"], ["tcut.0", "tcut.1"]],
    }


def shuffled(rows: list[str], seed: int = 7) -> list[str]:
    """Rows in a fixed random order, so the pipeline must sort for itself."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def utc(t: float) -> datetime:
    """A unix time as an aware UTC datetime."""
    return datetime.fromtimestamp(t, tz=timezone.utc)


def sha(text: str) -> str:
    """A hex hash like the anonymised ids of the Coveo data."""
    return hashlib.sha256(text.encode()).hexdigest()


def write_yoochoose(events: list[Event], folder: Path) -> list[Path]:
    """yoochoose-clicks.dat and yoochoose-test.dat (odd sessions), plus a buys file the reader must ignore."""
    folder.mkdir()
    rows = {0: [], 1: []}
    for e in events:
        if e.view:
            stamp = utc(e.t).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            rows[e.sid % 2].append(f"{e.sid},{stamp},{e.item},{'S' if e.item == A else 0}")
    (folder / "yoochoose-clicks.dat").write_text("\n".join(shuffled(rows[0])) + "\n")
    (folder / "yoochoose-test.dat").write_text("\n".join(shuffled(rows[1])) + "\n")
    (folder / "yoochoose-buys.dat").write_text("1,2014-04-06T18:44:58.314Z,214537888,12462,1\n")
    return [folder]


def write_rees46(events: list[Event], folder: Path) -> list[Path]:
    """2019-Oct.csv and 2019-Nov.csv with all nine columns; non-view events are carts."""
    folder.mkdir()
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    files = {"2019-Oct.csv": [], "2019-Nov.csv": []}
    for e in events:
        stamp = utc(e.t)
        name = "2019-Oct.csv" if stamp.month == 10 else "2019-Nov.csv"
        files[name].append(f"{stamp:%Y-%m-%d %H:%M:%S} UTC,{'view' if e.view else 'cart'},{e.item},"
                           f"2053013555631882655,electronics.smartphone,apple,{e.item / 7:.2f},"
                           f"{500000000 + e.sid},{sha(e.session)[:36]}")
    assert all(files.values()), "both months must hold events"
    for name, rows in files.items():
        (folder / name).write_text(header + "\n" + "\n".join(shuffled(rows)) + "\n")
    return [folder]


def write_coveo(events: list[Event], folder: Path) -> list[Path]:
    """release_10_23_2020.csv: detail events and pageviews with hashed sessions, SKUs and URLs."""
    folder.mkdir()
    rows = []
    for e in events:
        if e.view:
            rows.append(f"{sha(e.session)},event,detail,{sha(str(e.item))},{e.t * 1000},{sha(e.label)}")
        else:
            rows.append(f"{sha(e.session)},pageview,,,{e.t * 1000},{sha(e.label)}")
    header = "session_id_hash,event_type,product_action,product_skus_hash,server_timestamp_epoch_ms,hashed_url"
    path = folder / "release_10_23_2020.csv"
    path.write_text(header + "\n" + "\n".join(shuffled(rows)) + "\n")
    return [path]


def write_retailrocket(events: list[Event], folder: Path) -> list[Path]:
    """events.csv with views and add-to-cart events; transactionid empty."""
    folder.mkdir()
    rows = [f"{e.t * 1000},{e.sid},{'view' if e.view else 'addtocart'},{e.item}," for e in events]
    path = folder / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n" + "\n".join(shuffled(rows)) + "\n")
    return [path]


def write_diginetica(events: list[Event], folder: Path) -> list[Path]:
    """train-item-views.csv: eventdate = the session's first day, timeframe = ms since that day's midnight."""
    folder.mkdir()
    first = {}
    for e in events:
        first[e.sid] = min(first.get(e.sid, e.t), e.t)
    rows = []
    for e in events:
        if e.view:
            day = first[e.sid] // DAY * DAY
            rows.append(f"{e.sid};{'NA' if e.sid % 2 else e.sid * 3};{e.item};{(e.t - day) * 1000};"
                        f"{utc(day):%Y-%m-%d}")
    (folder / "train-item-views.csv").write_text("sessionId;userId;itemId;timeframe;eventdate\n"
                                                 + "\n".join(shuffled(rows)) + "\n")
    return [folder]


def coveo_item_codes(path: Path) -> dict[int, int]:
    """Raw item -> integer id by first appearance of its SKU hash in the written file."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    skus = [s for s in raw["product_skus_hash"] if s]
    codes = {sku: code for code, sku in enumerate(dict.fromkeys(skus))}
    return {item: codes[sha(str(item))] for item in (A, B, C, D, E, R, Q)}


def read_split(out: Path, name: str, fmt: str = "tsv") -> pd.DataFrame:
    """One written split."""
    path = out / f"{name}.{fmt}"
    return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, sep="\t")


def as_labels(df: pd.DataFrame, events: list[Event], ticks: int,
              items: dict[int, int] | None = None) -> list[list[str]]:
    """Sessions of an output split as sorted lists of event labels (events found by their unique time)."""
    by_time = {e.t * ticks: e for e in events}
    sessions: dict = {}
    for sid, item, t in df[["SessionId", "ItemId", "Time"]].itertuples(index=False):
        event = by_time[t]
        assert item == (items[event.item] if items else event.item), f"item of {event.label}"
        sessions.setdefault(sid, []).append(event.label)
    return sorted(sessions.values())


DATASETS = {
    # name: (writer, tsplit, T, time ticks per second, last event, how gap/bridge sessions come out)
    "yoochoose": (write_yoochoose, 1396915200, DAY, 1, 0, "given", "all"),
    "rees46": (write_rees46, 1575158400, DAY, 1, -HOUR, "split", "views"),
    "coveo": (write_coveo, 1600000000, DAY, 1000, 0, "split", "all"),
    "retailrocket": (write_retailrocket, 1442545200, 7 * DAY, 1000, -HOUR, "split", "all"),
    "diginetica": (write_diginetica, 1464739200, 7 * DAY, 1000, 0, "given", "all"),
}


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_common_pipeline_on_raw_format(dataset, tmp_path, capsys):
    writer, tsplit, window, ticks, last, gap, bridge = DATASETS[dataset]
    events = common_scenario(tsplit, window, tsplit + last)
    raw = writer(events, tmp_path / "raw")
    out = tmp_path / "out"
    stats = pp.preprocess(dataset, raw, out)
    printed = capsys.readouterr().out

    items = coveo_item_codes(raw[0]) if dataset == "coveo" else None
    splits = {name: read_split(out, name) for name in pp.SPLITS}
    got = {name: as_labels(df, events, ticks, items) for name, df in splits.items()}
    expected = {name: sorted(sessions) for name, sessions in expected_common(gap, bridge).items()}
    assert got == expected

    train_full_labels = {label for s in got["train_full"] for label in s}
    assert "dup.1" not in train_full_labels and {"dup.0", "dup.2", "dup.3"} <= train_full_labels  # A-A-B-A -> A-B-A
    every = {label for split in got.values() for s in split for label in s}
    assert not {"short.0", "casc.0", "casc.1", "ra.0", "rb.0", "rc.0", "rd.0"} & every  # short session, Q, then R
    assert "bridge.1" not in every  # the non-view event
    assert {"tcut.2", "tcut.3"}.isdisjoint(every)  # a straddling session loses its events after the boundary
    assert "tone.0" not in every and "vone.0" in train_full_labels  # one event left before the boundary: dropped
    assert not set(splits["test"]["SessionId"]) & set(splits["train_full"]["SessionId"])
    assert not set(splits["train_valid"]["SessionId"]) & set(splits["train_tr"]["SessionId"])
    for df in splits.values():  # rows ordered by session, then time
        assert df.equals(df.sort_values(["SessionId", "Time"], kind="stable"))

    assert "after removing consecutive repeats" in printed and "filter pass 3" in printed
    if dataset in ("rees46", "coveo", "retailrocket"):
        assert ("after view filter" in printed) or ("after detail filter" in printed)
    assert "rows/s" in printed
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    test_stats = on_disk["splits"]["test"]
    assert (test_stats["events"], test_stats["sessions"], test_stats["session_length_max"]) == (5, 2, 3)
    assert on_disk["test_boundary"] == utc(tsplit - window).isoformat(timespec="seconds")


def test_rees46_reads_a_folder_of_gzipped_months(tmp_path):
    events = common_scenario(1575158400, DAY, 1575158400 - HOUR)
    folder = write_rees46(events, tmp_path / "raw")[0]
    for name in ("2019-Oct.csv", "2019-Nov.csv"):
        path = folder / name
        (folder / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    data = pp.read_rees46([folder])
    assert list(data.columns) == list(pp.COLUMNS)
    assert len(data) == sum(e.view for e in events)


# ----------------------------------------------------------------------------------------------
# Session building, repeats, filters: the rules in isolation
# ----------------------------------------------------------------------------------------------

def test_gap_of_exactly_one_hour_keeps_the_session_and_one_second_more_splits():
    users = np.array([1, 1, 1, 1, 2, 2])
    times = np.array([0, 3600, 7201, 7202, 3600, 0])
    assert pp.sessions_by_gap(users, times, 3600).tolist() == [1, 1, 2, 2, 3, 3]


def test_consecutive_repeats_dropped_but_a_b_a_kept():
    data = pd.DataFrame({"SessionId": [1, 1, 1, 1, 2, 2, 2], "ItemId": [5, 5, 6, 5, 7, 8, 7],
                         "Time": [0, 1, 2, 3, 0, 1, 2]})
    out = pp.drop_consecutive_repeats(data.sample(frac=1, random_state=0))
    assert out["ItemId"].tolist() == [5, 6, 5, 7, 8, 7]


def test_iterative_filter_cascades_but_single_pass_does_not():
    # Q is rare; dropping it leaves session 1 with one event; dropping that drops R below 5.
    rows = [(1, R), (1, Q)] + [(s, i) for s in range(2, 6) for i in (R, A)] + [(6, A), (6, B)]
    rows += [(s, B) for s in range(2, 6)]
    data = pd.DataFrame(rows, columns=["SessionId", "ItemId"]).assign(Time=range(len(rows)))
    iterated = pp.filter_iterative(data, 2, 5)
    assert set(iterated["ItemId"]) == {A, B} and 1 not in set(iterated["SessionId"])
    once = pp.filter_once(data, 2, 5)
    assert R in set(once["ItemId"]) and Q not in set(once["ItemId"]) and 1 not in set(once["SessionId"])


def test_split_by_session_start_boundary_rule():
    data = pd.DataFrame({"SessionId": [1, 1, 2, 2, 2, 3, 3, 4, 4],
                         "ItemId": [1, 2, 1, 2, 3, 1, 2, 1, 2],
                         "Time": [10, 20, 80, 99, 100, 100, 110, 99, 130]})
    train, test = pp.split_by_session_start(data, 100)
    assert sorted(set(test["SessionId"])) == [3]               # starts exactly at the boundary
    assert train.groupby("SessionId").size().to_dict() == {1: 2, 2: 2}  # 2 loses its event at 100; 4 is left with one


# ----------------------------------------------------------------------------------------------
# RSC15 rules, on the raw click format and through `generic`
# ----------------------------------------------------------------------------------------------

L = 1396915200  # the last event


def rsc15_scenario() -> list[Event]:
    """Sessions for the RSC15 rules: repeats kept, one filtering pass, split by session end."""
    early = L - 5 * DAY
    return build([
        ("rep", early, [(A, 0), (A, 10), (B, 20)]),
        ("one", early + 1000, [(C, 0)]),
        ("casc", early + 2000, [(R, 0), (Q, 10)]),
        ("ra", early + 3000, [(R, 0), (A, 10)]),
        ("rb", early + 4000, [(R, 0), (B, 10)]),
        ("rc", early + 5000, [(R, 0), (C, 10)]),
        ("rd", early + 6000, [(R, 0), (D, 10)]),
        ("f", early + 7000, [(A, 0), (B, 10), (C, 20), (D, 30)]),
        ("vlong", L - DAY - 1, [(A, -DAY - DAY // 2 + 1), (B, 0)]),   # the last train event: L' = L - DAY - 1
        ("vend", L - 2 * DAY - 1, [(C, -100), (D, 0)]),              # ends exactly at L' - DAY: validation
        ("vbefore", L - 2 * DAY - 2, [(D, -200), (C, 0)]),          # ends one second earlier: train_tr
        ("tend", L - DAY, [(A, -100), (B, 0)]),                     # ends exactly at L - DAY: test
        ("tstr", L, [(C, -3 * DAY + 500), (D, -DAY // 2)]),          # straddles, ends in the test day
        ("tx1", L, [(X, -3600), (A, -3500)]),                       # X is only in test (support 5)
        ("tx2", L, [(B, -3000), (X, -2900), (C, -2800)]),
        ("tx3", L, [(X, -2000), (X, -1900)]),
        ("tx4", L, [(X, -1000), (D, 0)]),
    ])


RSC15_EXPECTED = {
    "train_full": [["rep.0", "rep.1", "rep.2"], ["ra.0", "ra.1"], ["rb.0", "rb.1"], ["rc.0", "rc.1"],
                   ["rd.0", "rd.1"], ["f.0", "f.1", "f.2", "f.3"], ["vlong.0", "vlong.1"], ["vend.0", "vend.1"],
                   ["vbefore.0", "vbefore.1"]],
    "test": [["tend.0", "tend.1"], ["tstr.0", "tstr.1"], ["tx2.0", "tx2.2"]],
    "train_tr": [["rep.0", "rep.1", "rep.2"], ["ra.0", "ra.1"], ["rb.0", "rb.1"], ["rc.0", "rc.1"],
                 ["rd.0", "rd.1"], ["f.0", "f.1", "f.2", "f.3"], ["vbefore.0", "vbefore.1"]],
    "train_valid": [["vend.0", "vend.1"], ["vlong.0", "vlong.1"]],
}


def test_rsc15_on_raw_clicks(tmp_path, capsys):
    events = rsc15_scenario()
    raw = tmp_path / "yoochoose-clicks.dat"
    raw.write_text("\n".join(shuffled([f"{e.sid},{utc(e.t):%Y-%m-%dT%H:%M:%S}.000Z,{e.item},0" for e in events]))
                   + "\n")
    pp.preprocess("rsc15", [raw], tmp_path / "out")
    got = {name: as_labels(read_split(tmp_path / "out", name), events, 1) for name in pp.SPLITS}
    assert got == {name: sorted(s) for name, s in RSC15_EXPECTED.items()}
    printed = capsys.readouterr().out
    assert "consecutive repeats" not in printed and "filter pass" not in printed
    assert "after dropping sessions shorter than 2 again" in printed


def test_generic_with_rsc15_rules_gives_the_hand_worked_splits(tmp_path):
    events = rsc15_scenario()
    path = tmp_path / "events.tsv"
    path.write_text("SessionId\tItemId\tTime\n" + "\n".join(f"{e.sid}\t{e.item}\t{e.t}" for e in events) + "\n")
    rules = pp.Rules(split="end", filter="once", drop_repeats=False)
    pp.preprocess("generic", [path], tmp_path / "out", "parquet", rules)
    got = {name: as_labels(read_split(tmp_path / "out", name, "parquet"), events, 1) for name in pp.SPLITS}
    assert got == {name: sorted(s) for name, s in RSC15_EXPECTED.items()}


def test_generic_common_rules_small_file_exact(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text(
        "sess,what,when\n"
        "s1,x,2020-01-01T10:00:00Z\n"
        "s1,x,2020-01-01T10:01:00Z\n"   # consecutive repeat
        "s1,y,2020-01-01T10:02:00Z\n"
        "s1,x,2020-01-01T10:03:00Z\n"   # A-B-A kept
        "s2,z,2020-01-02T10:00:00Z\n"   # one-event session
        "s6,w,2020-01-03T00:00:00Z\n"   # w has support 1 -> s6 left with one event
        "s6,x,2020-01-03T00:01:00Z\n"
        "s3,y,2020-01-08T12:00:00Z\n"   # starts after tsplit - 2T: validation
        "s3,x,2020-01-08T12:05:00Z\n"
        "s4,x,2020-01-08T23:59:59Z\n"   # straddles tsplit - T: keeps one event, then dropped
        "s4,y,2020-01-09T00:00:00Z\n"
        "s4,x,2020-01-09T00:10:00Z\n"
        "s5,x,2020-01-09T00:00:00Z\n"   # starts exactly at tsplit - T: test
        "s5,y,2020-01-09T01:00:00Z\n")
    code = pp.main(["generic", str(path), str(tmp_path / "out"), "--session-col", "sess", "--item-col", "what",
                    "--time-col", "when", "--min-item-support", "2", "--tsplit", "2020-01-10", "--window-days", "1"])
    assert code == 0
    printed = capsys.readouterr().out

    def frame(rows):
        """The expected split from (session, item, ISO time) rows."""
        return pd.DataFrame({"SessionId": [r[0] for r in rows], "ItemId": [r[1] for r in rows],
                             "Time": [int(pd.Timestamp(r[2]).timestamp()) for r in rows]})

    s1 = [("s1", "x", "2020-01-01T10:00:00Z"), ("s1", "y", "2020-01-01T10:02:00Z"), ("s1", "x", "2020-01-01T10:03:00Z")]
    s3 = [("s3", "y", "2020-01-08T12:00:00Z"), ("s3", "x", "2020-01-08T12:05:00Z")]
    s5 = [("s5", "x", "2020-01-09T00:00:00Z"), ("s5", "y", "2020-01-09T01:00:00Z")]
    expected = {"train_full": frame(s1 + s3), "test": frame(s5), "train_tr": frame(s1), "train_valid": frame(s3)}
    for name, want in expected.items():
        got = pd.read_csv(tmp_path / "out" / f"{name}.tsv", sep="\t", dtype={"SessionId": str, "ItemId": str})
        pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=name)
    assert "after removing consecutive repeats: 13 rows" in printed
    assert "filter pass 2" in printed
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["test_boundary"] == "2020-01-09T00:00:00+00:00"
    assert stats["splits"]["train_full"]["first"] == "2020-01-01T10:00:00+00:00"
    assert stats["splits"]["train_valid"]["session_length_mean"] == 2.0


# ----------------------------------------------------------------------------------------------
# Details of the raw formats
# ----------------------------------------------------------------------------------------------

def test_yoochoose_fractional_seconds_and_category_letters(tmp_path):
    path = tmp_path / "yoochoose-clicks.dat"
    path.write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n1,2014-04-07T10:54:09.868Z,214536500,S\n")
    data = pp.read_rsc15([path])
    assert data["Time"].tolist() == pytest.approx([1396867869.277, 1396868049.868], abs=1e-6)


def test_diginetica_time_uses_the_sessions_earliest_eventdate_and_both_header_spellings(tmp_path):
    for header in ("sessionId;userId;itemId;timeframe;eventdate", "session_id;user_id;item_id;timeframe;eventdate"):
        path = tmp_path / "train-item-views.csv"
        path.write_text(f"{header}\n7;NA;1;5000;2016-05-10\n7;NA;2;90000000;2016-05-09\n8;3;1;1;2016-05-10\n")
        data = pp.read_diginetica([path]).sort_values("Time")
        may9 = 1462752000 * 1000
        assert data["Time"].tolist() == [may9 + 5000, may9 + DAY * 1000 + 1, may9 + 90000000]
        assert data["SessionId"].tolist() == [7, 8, 7]


def test_coveo_accepts_the_singular_sku_column_and_numbers_items_by_first_appearance(tmp_path):
    path = tmp_path / "browsing_train.csv"
    path.write_text("session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"
                    "s,event,detail,kb,1000,u\ns,pageview,,,2000,u\ns,event,add,ka,3000,u\ns,event,detail,ka,4000,u\n")
    data = pp.read_coveo([path])
    assert data["ItemId"].tolist() == [0, 1] and data["Time"].tolist() == [1000, 4000]


# ----------------------------------------------------------------------------------------------
# Errors, atomic output, command line
# ----------------------------------------------------------------------------------------------

def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(pp.PreprocessError, match=r"nope\.csv: file not found"):
        pp.read_retailrocket([tmp_path / "nope.csv"])
    (tmp_path / "yoochoose-clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n")
    with pytest.raises(pp.PreprocessError, match=r"folder has no yoochoose-test\.dat"):
        pp.read_yoochoose([tmp_path])


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitor,event,itemid\n1,2,view,3\n")
    with pytest.raises(pp.PreprocessError, match=r"events\.csv: missing column 'visitorid'"):
        pp.read_retailrocket([path])


@pytest.mark.parametrize("dataset,name,text,line", [
    ("retailrocket", "events.csv", "timestamp,visitorid,event,itemid,transactionid\n1,2,view,3,\n1x,2,view,3,\n", 3),
    ("rsc15", "yoochoose-clicks.dat", "1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:51,5,0\n", 2),
    ("rees46", "2019-Oct.csv", "event_time,event_type,product_id,user_id\n2019-10-01 00:00:00 UTC,view,1,2\n"
                               "bad UTC,cart,1,2\n2019-13-01 00:00:00 UTC,view,1,2\n", 4),
    ("diginetica", "train-item-views.csv", "sessionId;userId;itemId;timeframe;eventdate\n1;NA;2;3;2016-05-32\n", 2),
    ("coveo", "release_10_23_2020.csv", "session_id_hash,product_action,product_skus_hash,"
                                        "server_timestamp_epoch_ms\ns,detail,k,\n", 2),
])
def test_unparseable_timestamp_names_file_and_first_bad_line(tmp_path, dataset, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(pp.PreprocessError, match=rf"{name.replace('.', '[.]')}, line {line}: cannot parse"):
        pp.READERS[dataset]([path])


def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    splits = {name: pd.DataFrame({"SessionId": [1, 1], "ItemId": [2, 3], "Time": [0, 1]}) for name in pp.SPLITS}
    real = pp._write_table

    def failing(data, path, fmt):
        """Write like the real writer, but fail on the third split."""
        if "train_tr" in path.name:
            raise OSError("disk full")
        real(data, path, fmt)

    monkeypatch.setattr(pp, "_write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        pp.write_splits(splits, tmp_path / "out", "tsv", {})
    assert list(tmp_path.iterdir()) == []  # no output folder, no staging folder left


def test_a_new_output_replaces_the_old_one_whole_and_other_files_are_not_swept_away(tmp_path):
    old = {name: pd.DataFrame({"SessionId": [1, 1], "ItemId": [2, 3], "Time": [0, 1]}) for name in pp.SPLITS}
    new = {name: frame.assign(ItemId=[7, 8]) for name, frame in old.items()}
    pp.write_splits(old, tmp_path / "out", "tsv", {"version": 1})
    pp.write_splits(new, tmp_path / "out", "tsv", {"version": 2})
    for name in pp.SPLITS:
        assert pd.read_csv(tmp_path / "out" / f"{name}.tsv", sep="\t")["ItemId"].tolist() == [7, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files \\(notes.txt\\)"):
        pp.write_splits(old, tmp_path / "out", "tsv", {})
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_cli_help_options_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="gru4rec")
    sub = parser.add_subparsers(dest="command")
    pp.add_parser(sub)
    args = parser.parse_args(["preprocess", "generic", "a.tsv", "b.tsv", "out", "--format", "parquet"])
    assert args.func is pp.run_preprocess and args.raw_paths == ["a.tsv", "b.tsv"] and args.out_dir == "out"
    with pytest.raises(SystemExit):
        parser.parse_args(["preprocess", "--help"])
    text = capsys.readouterr().out
    for option in ("--format", "--session-col", "--item-col", "--time-col", "--sep", "--time-unit",
                   "--min-item-support", "--min-session-length", "--drop-repeats", "--filter", "--split",
                   "--window-days", "--tsplit"):
        assert option in text
    assert pp.main(["rees46", str(tmp_path), str(tmp_path / "o"), "--min-item-support", "3"]) == 2
    assert "for the generic dataset only" in capsys.readouterr().err
    assert pp.main(["retailrocket", str(tmp_path / "missing.csv"), str(tmp_path / "o")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------

def shared(path: str) -> Path:
    """A file of the shared test data, skipping the test when it is absent."""
    full = SHARED / path
    if not full.exists():
        pytest.skip(f"{full} not present")
    return full


def test_generic_rsc15_rules_on_rsc15_100k(tmp_path):
    path = shared("rsc15_100k/train_full.tsv")
    stats = pp.preprocess("generic", [path], tmp_path, rules=pp.Rules(split="end", filter="once", drop_repeats=False))
    splits = stats["splits"]
    assert all(splits[name]["events"] > 0 for name in pp.SPLITS)
    assert splits["train_full"]["events"] + splits["test"]["events"] <= 69742
    assert splits["test"]["days"] < 2 and splits["train_full"]["days"] > 4
    assert splits["test"]["session_length_min"] >= 2 and splits["train_tr"]["session_length_min"] >= 2
    train = pd.read_csv(tmp_path / "train_full.tsv", sep="\t")
    test = pd.read_csv(tmp_path / "test.tsv", sep="\t")
    cut = max(train["Time"].max(), test["Time"].max()) - DAY
    assert (test.groupby("SessionId")["Time"].max() >= cut).all()
    assert (train.groupby("SessionId")["Time"].max() < cut).all()
    assert not set(test["SessionId"]) & set(train["SessionId"])
    assert set(test["ItemId"]) <= set(train["ItemId"])


def test_diginetica_sample_end_to_end(tmp_path, capsys):
    path = shared("diginetica_sample/raw/sample_train-item-views.csv")
    stats = pp.preprocess("diginetica", [path], tmp_path)
    printed = capsys.readouterr().out
    for step in ("rows/s", "all item views kept", "after removing consecutive repeats", "filter pass 1",
                 "after filtering", "train_full", "test", "train_tr", "train_valid"):
        assert step in printed
    splits = stats["splits"]
    assert all(splits[name]["events"] > 0 for name in pp.SPLITS)
    assert splits["test"]["days"] <= 7.01
    train = pd.read_csv(tmp_path / "train_full.tsv", sep="\t")
    test = pd.read_csv(tmp_path / "test.tsv", sep="\t")
    assert not set(test["SessionId"]) & set(train["SessionId"])
    assert train["Time"].min() > 1451606400000  # milliseconds in 2016
