"""Fixtures shared by the tests that run the command-line tools as subprocesses."""
import logging
import os
import signal
import subprocess
import urllib.request

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


@pytest.fixture
def s3(monkeypatch):
    """A real S3 server (moto's) on 127.0.0.1 with one empty bucket; the standard AWS variables point this
    process and the commands it starts at it. Yields the bucket's URI, s3://BUCKET."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # moto keeps its buckets per process, not per server: start each test from none
    urllib.request.urlopen(urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST"))
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="search-bucket")
    yield "s3://search-bucket"
    server.stop()
