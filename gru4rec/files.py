"""Writing output files atomically, so that a failure never leaves a half-written file behind."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
