"""The driver lease on object storage, against a real S3 server: one winner of a race, heartbeats that keep
a live driver's lease, takeover of a stale one, a superseded driver that kills itself, release of our own only,
and the write-then-confirm lease of stores without conditional writes."""
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from search.lease import DriverLock, Lease, LeaseRecord, WriteThenConfirm, driver_line
from search.settings import SearchError, Store

ROOT = str(Path(__file__).resolve().parents[1])
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from search.lease import Lease
from search.settings import Store
Lease(Store({uri!r}), host="head-a", heartbeat_s=0.3).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def store(s3, request) -> Store:
    """A search folder of this test's own (the S3 server keeps its objects from test to test)."""
    return Store(f"{s3}/{re.sub(r'[^A-Za-z0-9_.-]', '-', request.node.name)}")


def put_lease(store: Store, record: dict) -> None:
    """Write the lease object behind the drivers' backs, unconditionally."""
    bucket, _, folder = store.root.partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{folder}/driver.lock", Body=json.dumps(record).encode())


def lease_record(store: Store) -> LeaseRecord | None:
    text = store.read_text("driver.lock")
    return None if text is None else LeaseRecord.parse(text.encode())


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_holder(spawn, store: Store, tmp_path: Path):
    """A driver of host head-a in a process of its own that holds the lease with a heartbeat every 0.3 s."""
    proc = spawn([sys.executable, "-c", HOLDER.format(root=ROOT, uri=store.uri)], "holder.log")
    wait_for(lambda: "held" in (tmp_path / "holder.log").read_text())
    return proc


@pytest.mark.parametrize("confirm", [False, True], ids=["conditional", "write-then-confirm"])
def test_of_drivers_starting_at_once_exactly_one_wins(store, confirm):
    leases = [Lease(store, host=f"host{i}", pid=100 + i, heartbeat_s=60,
                    backend=WriteThenConfirm(store, settle_s=1.0) if confirm else None) for i in range(8)]
    start = threading.Barrier(len(leases))
    outcomes: dict[int, SearchError | None] = {}

    def drive(i: int) -> None:
        start.wait()
        try:
            leases[i].acquire()
            outcomes[i] = None
        except SearchError as e:
            outcomes[i] = e

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, error in outcomes.items() if error is None]
    assert len(winners) == 1, outcomes
    (w,) = winners
    assert lease_record(store).token == leases[w].record.token
    for i, error in outcomes.items():
        if i != w:
            assert f"being run by pid {100 + w} on host{w} since " in str(error)
            assert re.search(r"last heartbeat \d+s ago; wait for it or stop it first", str(error))
    leases[w].release()
    assert not store.exists("driver.lock")


def test_a_live_holder_is_not_taken_over_and_status_shows_its_heartbeat(store):
    holder = Lease(store, host="alive", pid=11, heartbeat_s=0.3, stale_s=2)
    holder.acquire()
    time.sleep(3)  # longer than stale_s: only the heartbeats keep the lease fresh
    assert lease_record(store).beats >= 5
    with pytest.raises(SearchError, match=r"being run by pid 11 on alive since .*driver.lock\), last heartbeat "
                                          r"[01]s ago; wait for it or stop it first"):
        Lease(store, stale_s=2).acquire()
    assert driver_line(store, stale_s=2).startswith("pid 11 on alive since ")
    holder.release()
    assert driver_line(store) is None


def test_a_killed_holder_is_taken_over_after_stale_s(store, spawn, tmp_path, capsys):
    proc = start_holder(spawn, store, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(SearchError, match=rf"being run by pid {proc.pid} on "):
        Lease(store, stale_s=2).acquire()  # dead, but not for long enough to tell
    time.sleep(3.2)  # stale_s and the 1 s resolution of the storage's clock
    assert "stale" in driver_line(store, stale_s=2)
    taker = Lease(store, stale_s=2, heartbeat_s=60)
    taker.acquire()
    assert lease_record(store).token == taker.record.token
    line = capsys.readouterr().out
    assert f"taking over search {store.uri} from pid {proc.pid} on head-a since " in line
    assert re.search(r"its last heartbeat was \d+s ago \(stale after 2s\)", line)
    taker.release()


def test_a_lease_of_an_ended_process_of_this_host_is_taken_over_at_once(store, capsys):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    put_lease(store, {"host": socket.gethostname(), "pid": int(ended.stdout), "started": "then", "token": "x"})
    lease = Lease(store, heartbeat_s=60)
    lease.acquire()
    expected = f"taking over search {store.uri} from pid {ended.stdout.strip()} on {socket.gethostname()} since then"
    assert re.search(re.escape(expected) + r": its last heartbeat was [01]s ago \(its process is gone\)",
                     capsys.readouterr().out)
    lease.release()


def test_a_holder_whose_lease_was_taken_kills_itself(store, spawn, tmp_path):
    proc = start_holder(spawn, store, tmp_path)
    thief = {"host": "thief", "pid": 4242, "started": "then", "token": "t"}
    put_lease(store, thief)
    assert proc.wait(timeout=15) == -signal.SIGKILL
    assert (f"driver of search {store.uri} (pid {proc.pid} on head-a): its lease was taken over "
            "by pid 4242 on thief since then; stopping at once") in (tmp_path / "holder.log").read_text()
    assert lease_record(store) == LeaseRecord(**thief)  # nothing written after the loss


@pytest.mark.parametrize("confirm", [False, True], ids=["conditional", "write-then-confirm"])
def test_release_deletes_only_our_own_lease(store, confirm):
    lease = Lease(store, heartbeat_s=60, backend=WriteThenConfirm(store, settle_s=0.2) if confirm else None)
    lease.acquire()
    put_lease(store, {"host": "other", "pid": 7, "started": "then", "token": "o"})
    lease.release()
    assert lease_record(store).host == "other"
    store.delete("driver.lock")
    lock = DriverLock(store)  # the driver's lock delegates to the lease on object storage
    lock.acquire()
    assert lease_record(store).pid == lock.pid
    lock.release()
    assert not store.exists("driver.lock")


def test_write_then_confirm_takes_over_a_lease_left_by_an_older_driver(store, capsys):
    put_lease(store, {"host": "gone", "pid": 77, "started": "long ago"})  # an older version's lock file: no token
    time.sleep(2.2)  # stale_s and the 1 s resolution of the storage's clock
    lease = Lease(store, stale_s=1, heartbeat_s=0.2, backend=WriteThenConfirm(store, settle_s=0.2))
    lease.acquire()
    assert f"taking over search {store.uri} from pid 77 on gone since long ago" in capsys.readouterr().out
    beats = lease_record(store).beats
    wait_for(lambda: lease_record(store).beats > beats, timeout=5)  # its heartbeat renews it
    with pytest.raises(SearchError, match=r"being run by pid .* last heartbeat [01]s ago"):
        Lease(store, backend=WriteThenConfirm(store, settle_s=0.2)).acquire()
    lease.release()
    assert not store.exists("driver.lock")


CUT_OFF = """
import sys, time, boto3
sys.path.insert(0, {root!r})
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
import os
os.environ["AWS_ENDPOINT_URL"] = "http://%s:%d" % server.get_host_and_port()
boto3.client("s3").create_bucket(Bucket="cut-off")
from search.lease import Lease
from search.settings import Store
Lease(Store("s3://cut-off/search"), host="head-a", heartbeat_s=0.2, stale_s=1.5).acquire()
server.stop()  # the storage is unreachable from now on
print("cut off", flush=True)
time.sleep(60)
"""


def test_a_holder_that_cannot_renew_until_its_lease_may_be_stale_kills_itself(s3, spawn, tmp_path):
    proc = spawn([sys.executable, "-c", CUT_OFF.format(root=ROOT)], "cut-off.log")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    log = (tmp_path / "cut-off.log").read_text()
    assert "cut off" in log and "warning: cannot renew the driver lease" in log
    assert re.search(r"its lease could not be renewed for 2s \(.*\); another driver may hold it now; stopping at once",
                     log), log
