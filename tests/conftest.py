"""Fixtures shared by the tests that run the command-line tools as subprocesses."""
import os
import signal
import subprocess

import pytest


@pytest.fixture
def spawn(tmp_path):
    """Start commands in their own process groups; kill each whole group when the test ends."""
    started: list[subprocess.Popen] = []

    def start(args: list, log: str, **kwargs) -> subprocess.Popen:
        out = open(tmp_path / log, "w")
        proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
