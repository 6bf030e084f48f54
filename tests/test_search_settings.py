"""search.json (absolute paths, fingerprints, hand edits), the driver lock, the store's atomic writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs
import pytest

from search.lease import DriverLock
from search.settings import SearchError, SearchSettings, Store, absolute_database_url, fingerprint, write_atomically
from search.spaces import default_space_file, read_space_text


def settings(tmp_path, **changes):
    for split in ("tr", "va", "tf", "te"):
        (tmp_path / f"{split}.tsv").write_text("SessionId\tItemId\tTime\n1\t1\t1\n1\t2\t2\n")
    spaces = {"cross-entropy": {"source": "xe.jsonl", "text": read_space_text(default_space_file("cross-entropy"))}}
    values = dict(name="s1", train="tr.tsv", valid="va.tsv", train_full="tf.tsv", test="te.tsv",
                  losses=["cross-entropy"], modes=["shared"], spaces=spaces, trials=4, epochs=2,
                  optuna_storage="sqlite:///rel/o.db")
    values.update(changes)
    return SearchSettings(**values)


def test_paths_are_made_absolute_and_changed_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings(tmp_path)
    s.make_paths_absolute()
    assert s.train == str(tmp_path / "tr.tsv") and s.optuna_storage == f"sqlite:///{tmp_path}/rel/o.db"
    assert absolute_database_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    s.take_fingerprints()
    again = SearchSettings.from_json(s.to_json(), "search.json")
    again.check_data()
    (tmp_path / "te.tsv").write_text("SessionId\tItemId\tTime\n1\t1\t1\n1\t3\t2\n")
    with pytest.raises(SearchError, match=r"--test .*te.tsv: the file changed since the search started"):
        again.check_data()
    assert fingerprint(tmp_path / "te.tsv") != s.fingerprints["test"]


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.pop("trials") and d or d, None),  # a setting with a default may be left out
    (lambda d: {**d, "trails": 5}, "unknown setting 'trails'"),
    (lambda d: {k: v for k, v in d.items() if k != "train"}, "missing setting 'train'"),
    (lambda d: {**d, "trials": "many"}, "setting 'trials' has the wrong type ('many')"),
    (lambda d: {**d, "epochs": 0}, "--epochs must be an integer >= 1"),
    (lambda d: {**d, "modes": ["shared", 3]}, "setting 'modes' has the wrong type"),
])
def test_a_hand_edited_search_json_gives_one_line(tmp_path, edit, needle):
    text = json.dumps(edit(json.loads(settings(tmp_path).to_json())))
    if needle is None:
        assert SearchSettings.from_json(text, "search.json").trials == 200
        return
    with pytest.raises(SearchError, match="search.json: " + needle.replace("(", r"\(").replace(")", r"\)")):
        SearchSettings.from_json(text, "search.json")
    with pytest.raises(SearchError, match=r"search.json: line 1: not valid JSON"):
        SearchSettings.from_json(text[:-3], "search.json")


def test_the_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path):
    store = Store(str(tmp_path / "s1"))
    store.check_writable()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from search.lease import DriverLock
from search.settings import Store
DriverLock(Store({str(tmp_path / "s1")!r})).acquire()
print("locked", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(SearchError, match=rf"being run by pid {holder.pid} on .* since "):
        DriverLock(store).acquire()
    holder.kill()  # dies without releasing: the kernel drops its lock
    holder.wait()
    lock = DriverLock(store)
    lock.acquire()
    assert json.loads(store.read_text("driver.lock"))["pid"] == os.getpid()
    lock.release()
    DriverLock(store).acquire()


def test_atomic_writes_through_a_non_local_filesystem_leave_no_temporary(tmp_path):
    fs = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())  # the object-storage branch
    write_atomically(fs, "x/state.json", b"{}")
    write_atomically(fs, "x/state.json", b"[1]")
    (tmp_path / "x" / "taken").mkdir()
    with pytest.raises(OSError):
        write_atomically(fs, "x/taken", b"a file cannot replace a folder")
    assert sorted(os.listdir(tmp_path / "x")) == ["state.json", "taken"]
    assert (tmp_path / "x" / "state.json").read_bytes() == b"[1]"


def test_store_writes_atomically_with_names_unique_per_writer(tmp_path):
    store = Store(str(tmp_path / "root" / "s1"))
    store.check_writable()
    store.write("a/b.txt", "hello")
    store.write("a/b.txt", b"again")
    assert store.read_text("a/b.txt") == "again" and store.read_text("missing") is None
    assert sorted(os.listdir(tmp_path / "root" / "s1" / "a")) == ["b.txt"]
    assert store.size() == 5
    (tmp_path / "file").write_text("")
    with pytest.raises(SearchError, match="not writable"):
        Store(str(tmp_path / "file" / "s1")).check_writable()
