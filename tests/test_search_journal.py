"""The Optuna journal on object storage (a real S3 server on 127.0.0.1): pushed in pieces, merged with each byte
written at most twice, and each host's copy checked against the storage (the newer wins)."""
import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from search import journal
from search.journal import PARTS, JournalReplica
from search.settings import JOURNAL_FILE, Store

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def store(s3):
    return Store(f"{s3}/searches/one")


def host(store, tmp_path, name):
    """A replica with its own cache folder, as on another machine."""
    replica = JournalReplica(store, tmp_path / name)
    replica.pull()
    return replica


def append(replica, text):
    with open(replica.local, "ab") as f:
        f.write(text.encode())


def test_push_uploads_only_complete_new_lines(store, tmp_path):
    a = host(store, tmp_path, "a")
    append(a, "one\ntwo\nthr")
    assert a.push() == len("one\ntwo\n")
    assert a.read_stored() == b"one\ntwo\n"
    assert a.push() == 0  # nothing complete added
    append(a, "ee\n")
    assert a.push() == len("three\n")
    assert a.read_stored() == b"one\ntwo\nthree\n"
    assert store.list(PARTS) == ["p-00000000000000000000-00000000000000000008",
                                 "p-00000000000000000008-00000000000000000014"]
    assert a.bytes_written == 14


def test_merging_keeps_the_journal_and_writes_each_byte_at_most_twice(store, tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "MERGE_AT", 4)
    a = host(store, tmp_path, "a")
    lines = [f"line {i}\n" for i in range(11)]
    for line in lines:
        append(a, line)
        a.push()
    final = "".join(lines).encode()
    assert a.read_stored() == final
    names = store.list(PARTS)
    # 11 pushes: two merges of 4 pushes each, then 3 pushes not merged yet
    assert [n[0] for n in names] == ["m", "m", "p", "p", "p"]
    assert a.bytes_written == len(final) + sum(len(line) for line in lines[:8])
    assert a.bytes_written < 2 * len(final)


def test_a_stale_copy_is_brought_up_to_date(store, tmp_path):
    a = host(store, tmp_path, "a")
    append(a, "from a\n")
    a.push()
    b = host(store, tmp_path, "b")
    assert b.local.read_bytes() == b"from a\n"
    append(b, "from b\n")
    b.push()
    a = host(store, tmp_path, "a")  # a resumes with its old copy
    assert a.local.read_bytes() == b"from a\nfrom b\n"
    assert a.pushed == len(b"from a\nfrom b\n")


def test_a_copy_ahead_of_the_storage_is_kept_and_pushed(store, tmp_path):
    a = host(store, tmp_path, "a")
    append(a, "pushed\n")
    a.push()
    append(a, "not pushed before the stop\n")
    a = host(store, tmp_path, "a")
    assert a.local.read_bytes() == b"pushed\nnot pushed before the stop\n"
    a.push()
    assert a.read_stored() == b"pushed\nnot pushed before the stop\n"


def test_a_diverged_copy_is_set_aside_for_the_stored_journal(store, tmp_path, capsys):
    a = host(store, tmp_path, "a")
    append(a, "common\n")
    a.push()
    append(a, "a's line never pushed\n")
    b = host(store, tmp_path, "b")
    append(b, "b went on\n")
    b.push()
    a = host(store, tmp_path, "a")
    assert a.local.read_bytes() == b"common\nb went on\n"
    aside = list((tmp_path / "a").glob(f"{JOURNAL_FILE}.diverged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"common\na's line never pushed\n"
    assert "disagrees" in capsys.readouterr().out


def test_a_whole_journal_from_before_pieces_is_the_start(store, tmp_path):
    store.write(JOURNAL_FILE, b"old whole file\n")
    a = host(store, tmp_path, "a")
    assert a.local.read_bytes() == b"old whole file\n"
    append(a, "new\n")
    a.push()
    assert store.list(PARTS) == ["p-00000000000000000015-00000000000000000019"]
    assert host(store, tmp_path, "b").local.read_bytes() == b"old whole file\nnew\n"


def test_optuna_studies_survive_hosts_taking_turns(store, tmp_path):
    """Two hosts take turns on one study (the stale-cache case); every trial of both is in each one's view."""
    def turn(name, n_trials):
        replica = host(store, tmp_path, name)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(replica.local)))
        study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n_trials)
        replica.push()
        return len(study.trials)

    assert turn("a", 2) == 2
    assert turn("b", 2) == 4
    assert turn("a", 2) == 6  # a's copy had 2 trials; it must not lose b's


def test_journal_bytes_written_grow_linearly(store, tmp_path):
    """200 trials pushed one by one: bytes written stay under twice the journal (whole-file uploads: ~100x)."""
    a = host(store, tmp_path, "a")
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(a.local)))
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(200):
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 9), n_trials=1)
        a.push()
    size = a.local.stat().st_size
    assert a.read_stored() == a.local.read_bytes()
    assert a.bytes_written < 2 * size
    assert len(store.list(PARTS)) < journal.MERGE_AT + 200 // journal.MERGE_AT + 1
