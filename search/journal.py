"""The Optuna journal of a search on object storage: a local file that Optuna appends to, replicated to the
search folder as immutable pieces.

Object storage has no append, and rewriting the whole journal after every trial costs bytes quadratic in the
trials. The journal only grows, so each push uploads the complete lines added since the last one as a piece
named by its byte range (`optuna.journal.parts/START-END`); once there are many small pieces they are merged
into one (each byte is written at most twice). The journal of the search is the concatenation of the pieces
from byte 0 (after a whole-file `optuna.journal` from before pieces existed, if there is one).

Every host keeps its own copy (the cache). Before use it is checked against the storage: a copy that is a
prefix of the stored journal is brought up to date; a copy that extends it (this host stopped before it had
pushed everything) is kept and pushed; a copy that disagrees with it (another host went on from the stored
journal) is set aside, and the stored journal is used.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from gru4rec.files import atomic_path

from .settings import JOURNAL_FILE, SearchError, Store

logger = logging.getLogger(__name__)

PARTS = f"{JOURNAL_FILE}.parts"
MERGE_AT = 64  # small pieces that are merged into one
_PIECE = re.compile(r"^(p|m)-(\d{20})-(\d{20})$")  # p: a push, m: merged pushes


@dataclass(frozen=True)
class Piece:
    """One stored piece of the journal: bytes [start, end) of it."""

    name: str
    start: int
    end: int

    @property
    def merged(self) -> bool:
        return self.name.startswith(f"{PARTS}/m-")


def piece_name(kind: str, start: int, end: int) -> str:
    return f"{kind}-{start:020d}-{end:020d}"


def cache_folder(uri: str) -> Path:
    """This host's folder for the local copy of a search's journal (under $XDG_CACHE_HOME or ~/.cache)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    return root / "gru4rec-search" / uri.replace("://", "_").replace("/", "_")


class JournalReplica:
    """This host's copy of a search's journal and its pieces in the search folder."""

    def __init__(self, store: Store, cache: Path | None = None):
        self.store = store
        self.local = (cache or cache_folder(store.uri)) / JOURNAL_FILE
        self.pushed = 0  # bytes of the local copy known to be in the store
        self.bytes_written = 0  # bytes this process wrote to the store (pushes and merges)

    # -- reading the store --------------------------------------------------------------------------
    def pieces(self) -> list[Piece]:
        """The stored pieces that make up the journal from byte 0, in order (overlaps left out)."""
        found = []
        if (size := self._base_size()) is not None:
            found.append(Piece(JOURNAL_FILE, 0, size))
        for name in self.store.list(PARTS):
            if match := _PIECE.match(name):
                found.append(Piece(f"{PARTS}/{name}", int(match[2]), int(match[3])))
        chain, position = [], 0
        while True:  # at each offset the longest piece: a merge is written before its pushes are deleted
            following = [p for p in found if p.start == position and p.end > position]
            if not following:
                break
            chain.append(max(following, key=lambda p: p.end))
            position = chain[-1].end
        return chain

    def _base_size(self) -> int | None:
        return self.store.fs.get_file_info(self.store.path(JOURNAL_FILE)).size if self.store.exists(JOURNAL_FILE) \
            else None

    def read_stored(self) -> bytes:
        """The journal as stored; pieces deleted by a merge while they are read are read again."""
        for _ in range(5):
            try:
                return b"".join(self._read(p) for p in self.pieces())
            except FileNotFoundError:
                time.sleep(0.2)
        raise SearchError(f"storage {self.store.uri}: the journal's pieces kept changing while being read")

    def _read(self, piece: Piece) -> bytes:
        data = self.store.read_bytes(piece.name)
        if data is None:
            raise FileNotFoundError(piece.name)
        if len(data) != piece.end - piece.start:
            raise SearchError(f"{self.store.path(piece.name)}: {len(data)} bytes, expected "
                              f"{piece.end - piece.start}; the journal in {self.store.uri} is damaged")
        return data

    # -- the local copy -----------------------------------------------------------------------------
    def pull(self) -> Path:
        """Bring the local copy in line with the store (the newer wins; see the module's docstring)."""
        stored = self.read_stored()
        local = self.local.read_bytes() if self.local.exists() else None
        self.local.parent.mkdir(parents=True, exist_ok=True)
        if local is not None and local.startswith(stored):
            if len(local) > len(stored):
                logger.info("the local journal %s holds %d bytes the storage lacks; they are pushed",
                            self.local, len(local) - len(stored))
        else:
            if local is not None and not stored.startswith(local):
                aside = self.local.with_name(f"{JOURNAL_FILE}.diverged-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(self.local, aside)
                print(f"the local journal copy disagrees with {self.store.uri} (another host went on from the "
                      f"stored journal); the stored one is used, the local copy is kept as {aside}", flush=True)
            with atomic_path(self.local) as tmp:
                tmp.write_bytes(stored)
        self.pushed = len(stored)
        return self.local

    def push(self) -> int:
        """Upload the complete lines appended to the local copy since the last push; returns their bytes."""
        if not self.local.exists():
            return 0
        with open(self.local, "rb") as f:
            f.seek(self.pushed)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]  # Optuna may be appending a line right now
        if not data:
            return 0
        start, end = self.pushed, self.pushed + len(data)
        self._write(piece_name("p", start, end), data)
        self.pushed = end
        self.bytes_written += len(data)
        self.merge()
        return len(data)

    def _write(self, name: str, data: bytes) -> None:
        """Write a piece in one go: on object storage it appears whole when written, and its name is its own."""
        with self.store.fs.open_output_stream(self.store.path(f"{PARTS}/{name}")) as f:
            f.write(data)

    def merge(self) -> None:
        """Merge the pushed pieces into one when there are MERGE_AT of them (merged pieces are not merged again)."""
        small = [p for p in self.pieces() if not p.merged and p.name != JOURNAL_FILE]
        if len(small) < MERGE_AT:
            return
        data = b"".join(self._read(p) for p in small)
        self._write(piece_name("m", small[0].start, small[-1].end), data)
        self.bytes_written += len(data)
        for piece in small:
            self.store.delete(piece.name)


_replicas: dict[tuple[str, Path], JournalReplica] = {}


def replica(store: Store) -> JournalReplica:
    """This process's replica of a search's journal, pulled from the store on first use."""
    key = (store.uri, cache_folder(store.uri))
    if key not in _replicas:
        _replicas[key] = JournalReplica(store, key[1])
        _replicas[key].pull()
    return _replicas[key]
