"""Writing output files atomically, so that a failure never leaves a half-written file (or set of files) behind."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file beside `path` to write to: renamed over `path` on success, removed on failure.

    The file gets the permissions a plain `open` would give it (the umask applies).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def probe_directory(directory: str | os.PathLike) -> None:
    """Create and remove a file in `directory`; raises OSError where that is not possible."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-", suffix=".tmp"):
        pass


@contextmanager
def atomic_directory(path: str | os.PathLike, names: Iterable[str]) -> Iterator[Path]:
    """A staging folder beside `path` to write the files `names` into; on success it replaces `path` whole.

    Files renamed one by one could leave old and new files mixed after a crash; folders swapped by two
    renames cannot (in between, `path` is briefly absent). Since the whole folder is replaced, an
    existing `path` may hold only files of `names`. On failure the staging folder is removed.
    """
    path, names = Path(path), set(names)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        others = sorted(p.name for p in path.iterdir() if p.name not in names and not p.name.startswith("."))
        if others:
            raise FileExistsError(f"{path} holds other files ({', '.join(others[:3])}); its outputs replace the "
                                  "folder as a whole, so choose an empty or new folder")
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging"))
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        if path.exists():
            previous = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".previous"))
            os.rename(path, previous / path.name)
            os.rename(staging, path)
            shutil.rmtree(previous)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
