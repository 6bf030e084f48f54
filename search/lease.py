"""One driver per search: a POSIX lock on a local or NFS folder, a lease with a heartbeat on object storage.

On a local or NFS path the driver holds a POSIX lock on NAME/driver.lock, which the kernel drops when it dies.
Object storage has no locks, so there NAME/driver.lock is a lease: a record (host, pid, start, a random token)
that its holder rewrites every HEARTBEAT_S seconds. A lease not rewritten for STALE_S seconds, judged by the
storage's own clock (so the hosts' clocks need not agree), is stale, and the next driver takes it over; so does
a driver of the holder's host at once when the holder's process has ended. On S3 every write of the lease is
conditional (create if absent, replace if unchanged since read), so of drivers racing for it exactly one wins;
other stores are written, left to settle for SETTLE_S seconds and read back, and the last writer owns the
lease. A holder that finds its lease taken ends itself at once (SIGKILL), so a superseded driver writes nothing
more; the search survives that as it survives any kill.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, NoReturn

import boto3
import botocore.exceptions
import pyarrow.fs

from .settings import LOCK_FILE, SearchError, Store

HEARTBEAT_S = 30.0
STALE_S = 120.0  # four missed heartbeats
SETTLE_S = 5.0  # how long a write that cannot be conditional waits before reading itself back
LOST = (404, 409, 412)  # HTTP statuses of a conditional S3 write that lost: no object, a concurrent write, changed


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _held(store: Store, holder: str, heartbeat: str = "") -> SearchError:
    return SearchError(f"search {store.uri} is being run by {holder} ({store.path(LOCK_FILE)}){heartbeat}; "
                       "wait for it or stop it first")


@dataclass
class LeaseRecord:
    """Who holds a lease on object storage; `beats` makes each renewal's content (and so its etag) new."""

    host: str = "?"
    pid: int | str = "?"
    started: str = "?"
    token: str = ""
    beats: int = 0

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord:
        """The record in a lease's bytes; what it lacks (a lock file of an older version) stays unknown."""
        try:
            values = json.loads(data)
        except ValueError:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}) if isinstance(values, dict) else cls()

    def encode(self) -> bytes:
        """The lease's content: one JSON line."""
        return (json.dumps(dataclasses.asdict(self)) + "\n").encode()

    def holder(self) -> str:
        """Who holds it, for people: pid, host and since when."""
        return f"pid {self.pid} on {self.host} since {self.started}"


class Seen(NamedTuple):
    """A lease as read: its record, the tag a conditional write must match, and when the storage wrote it."""

    record: LeaseRecord
    tag: str
    modified: datetime


def _status(error: botocore.exceptions.ClientError) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class ConditionalS3:
    """The lease as an S3 object that is only written conditionally: created if absent, replaced if its
    etag is still the one read (S3 answers 412 to the loser)."""

    def __init__(self, store: Store):
        # a session of its own (the default one is not safe across threads); the endpoint from AWS_ENDPOINT_URL
        self.client = boto3.session.Session().client("s3")
        self.bucket, _, prefix = store.root.partition("/")
        self.folder = f"{prefix}/" if prefix else ""
        self.key = self.folder + LOCK_FILE

    def read(self) -> Seen | None:
        """The lease as it is now, or None when there is none."""
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except botocore.exceptions.ClientError as e:
            if _status(e) == 404:
                return None
            raise
        return Seen(LeaseRecord.parse(got["Body"].read()), got["ETag"], got["LastModified"])

    def write(self, record: LeaseRecord, tag: str | None) -> str | None:
        """Write the record if there is no lease (tag None) or it is still `tag`: its new tag, or None."""
        condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=record.encode(),
                                          **condition)["ETag"]
        except botocore.exceptions.ClientError as e:
            if _status(e) in LOST:
                return None
            raise

    def delete(self, tag: str) -> None:
        """Delete the lease if it is still `tag`."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=tag)
        except botocore.exceptions.ClientError as e:
            if _status(e) not in LOST:
                raise

    def now(self) -> datetime:
        """The storage's clock: the time it gives an object written now."""
        key = f"{self.folder}.{LOCK_FILE}.clock-{uuid.uuid4().hex}"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["LastModified"]
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=key)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class WriteThenConfirm:
    """The lease as a file of a store without conditional writes (through pyarrow): check, write, let the
    write settle, read it back; the last writer owns it. A tag is the hash of the lease's content."""

    def __init__(self, store: Store, settle_s: float = SETTLE_S):
        self.fs, self.folder, self.path = store.fs, store.root, store.path(LOCK_FILE)
        self.settle_s = settle_s

    def read(self) -> Seen | None:
        """The lease as it is now, or None when there is none."""
        info = self.fs.get_file_info(self.path)
        if info.type == pyarrow.fs.FileType.NotFound:
            return None
        try:
            with self.fs.open_input_stream(self.path) as f:
                data = f.readall()
        except FileNotFoundError:
            return None
        return Seen(LeaseRecord.parse(data), _digest(data), info.mtime)

    def write(self, record: LeaseRecord, tag: str | None) -> str | None:
        """Write the record if there is no lease (tag None) or it is still `tag`, and confirm it stayed."""
        seen = self.read()
        if (seen.tag if seen else None) != tag:
            return None
        data = record.encode()
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)
        time.sleep(self.settle_s)
        seen = self.read()
        return seen.tag if seen and seen.tag == _digest(data) else None

    def delete(self, tag: str) -> None:
        """Delete the lease if it is still `tag`."""
        seen = self.read()
        if seen and seen.tag == tag:
            self.fs.delete_file(self.path)

    def now(self) -> datetime:
        """The storage's clock: the time it gives a file written now."""
        path = f"{self.folder}/.{LOCK_FILE}.clock-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(path):
            pass
        try:
            return self.fs.get_file_info(path).mtime
        finally:
            self.fs.delete_file(path)


Backend = ConditionalS3 | WriteThenConfirm


def backend_for(store: Store) -> Backend:
    """Conditional writes on S3; write-then-confirm on the other object stores."""
    return ConditionalS3(store) if store.uri.startswith("s3://") else WriteThenConfirm(store)


def heartbeat_age(backend: Backend, seen: Seen) -> float:
    """Seconds since the lease was last written, by the storage's clock."""
    return max(0.0, (backend.now() - seen.modified).total_seconds())


class Lease:
    """The driver's lease on object storage: taken atomically, renewed by a heartbeat, taken over when stale."""

    def __init__(self, store: Store, host: str | None = None, pid: int | None = None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S, backend: Backend | None = None):
        self.store = store
        self.record = LeaseRecord(socket.gethostname() if host is None else host,
                                  os.getpid() if pid is None else pid, _now_text(), uuid.uuid4().hex)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.backend = backend or backend_for(store)
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Create the lease or take over a stale one, then keep it alive; SearchError if another driver holds it."""
        try:
            self._tag = self._take()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            raise SearchError(f"storage {self.store.uri}: cannot write the driver lease ({e})") from None
        self._thread = threading.Thread(target=self._heartbeat, name="driver-lease", daemon=True)
        self._thread.start()

    def _take(self) -> str:
        """The tag of the lease once this driver owns it (a few tries while it changes hands)."""
        for _ in range(3):
            if (tag := self.backend.write(self.record, None)) is not None:
                return tag
            seen = self.backend.read()
            if seen is None:
                continue  # released meanwhile
            if seen.record.token == self.record.token:
                return seen.tag  # our write landed though its answer was lost (a retried request)
            age = heartbeat_age(self.backend, seen)
            gone = self._gone(seen.record)
            if age < self.stale_s and not gone:
                raise _held(self.store, seen.record.holder(), f", last heartbeat {age:.0f}s ago")
            if (tag := self.backend.write(self.record, seen.tag)) is not None:
                why = "its process is gone" if gone else f"stale after {self.stale_s:.0f}s"
                print(f"taking over search {self.store.uri} from {seen.record.holder()}: its last heartbeat was "
                      f"{age:.0f}s ago ({why})", flush=True)
                return tag
        raise SearchError(f"search {self.store.uri}: its driver lease ({self.store.path(LOCK_FILE)}) keeps "
                          "changing hands; try again")

    def _gone(self, holder: LeaseRecord) -> bool:
        """Whether the holder is a process of this host that no longer runs (no need to wait for staleness)."""
        if holder.host != self.record.host or not isinstance(holder.pid, int) or holder.pid <= 0:
            return False
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False

    def _heartbeat(self) -> None:
        """Renew the lease every heartbeat_s; a lease found taken by another driver ends this process."""
        renewed = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            self.record.beats += 1
            try:
                tag = self.backend.write(self.record, self._tag)
                seen = self.backend.read() if tag is None else None
            except Exception as e:  # the storage is unreachable: try again, until the lease may have gone stale
                if time.monotonic() - renewed >= self.stale_s:
                    self._stop_now(f"could not be renewed for {self.stale_s:.0f}s ({e}); another driver may "
                                   "hold it now")
                print(f"warning: cannot renew the driver lease of search {self.store.uri} ({e}); trying again "
                      f"in {self.heartbeat_s:g}s", file=sys.stderr, flush=True)
                continue
            if tag is None and seen is not None and seen.record.token == self.record.token:
                tag = seen.tag  # still ours: the write landed though its answer was lost, or it met a conflict
            if tag is None:
                self._stop_now(f"was taken over by {seen.record.holder()}" if seen else "was deleted")
            self._tag, renewed = tag, time.monotonic()

    def _stop_now(self, why: str) -> NoReturn:
        """Stop at once: another driver may own the search now, and this one must not write anything more."""
        print(f"driver of search {self.store.uri} (pid {self.record.pid} on {self.record.host}): its lease {why}; "
              "stopping at once", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tag is not None:
            self.backend.delete(self._tag)
            self._tag = None


@dataclass
class DriverLock:
    """The lock of the process that runs a search: one `run` or `resume` at a time per search folder.

    On a local or NFS path it is a POSIX lock on NAME/driver.lock, which the kernel releases when the
    holder dies (so a dead driver's lock is taken over, and two drivers starting at once cannot both
    get it); the file names the holder (host, pid, start time) for the error of a second driver. On
    object storage it is a Lease (this module's docstring).
    """

    store: Store
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    _fd: int | None = None
    _lease: Lease | None = None

    def acquire(self) -> None:
        """Become the search's driver, or a SearchError naming the one that is."""
        if not self.store.local:
            self._lease = Lease(self.store, self.host, self.pid)
            self._lease.acquire()
            return
        self._acquire_local(json.dumps({"host": self.host, "pid": self.pid, "started": _now_text()}) + "\n")

    def _acquire_local(self, record: str) -> None:
        fd = os.open(self.store.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._held(self._holder() or {}) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Stop being the driver (on normal exit; a killed driver's lock or lease is taken over)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None
        elif self._lease is not None:
            self._lease.release()
            self._lease = None

    def _held(self, holder: dict) -> SearchError:
        return _held(self.store, f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                                 f"{holder.get('started', '?')}")

    def _holder(self) -> dict | None:
        try:
            text = self.store.read_text(LOCK_FILE)
            return json.loads(text) if text and text.strip() else None
        except (json.JSONDecodeError, OSError):
            return None


def driver_line(store: Store, stale_s: float = STALE_S) -> str | None:
    """Who drives the search, for `status`: the lock file's text, or on object storage the lease's holder
    and the age of its last heartbeat; None when no driver holds it."""
    if store.local:
        text = (store.read_text(LOCK_FILE) or "").strip()
        return text or None
    backend = backend_for(store)
    if (seen := backend.read()) is None:
        return None
    age = heartbeat_age(backend, seen)
    stale = f", stale (after {stale_s:.0f}s): the next run or resume takes it over" if age >= stale_s else ""
    return f"{seen.record.holder()}, last heartbeat {age:.0f}s ago{stale}"
