"""Seconds of `gru4rec-search status` on one search folder, locally and on a local S3 server, for code trees run in
turn (so that two versions are compared in one run on the same machine).

    .venv/bin/python bench/status_time.py STORAGE NAME [TREE ...] [--rounds 3] [--s3]

STORAGE/NAME is an existing search folder (for example the one `bench/driver_scale.py` leaves in its work folder);
each TREE is a checkout of this repository put first on PYTHONPATH (default: this one). With --s3 the folder is
first copied to a moto S3 server on 127.0.0.1, which runs in this process, and status reads it from there.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "status-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_copy(storage: str, name: str) -> tuple[str, dict[str, str], object]:
    """Start a moto server, copy STORAGE/NAME to it; returns the search's --storage, its environment, the server."""
    import boto3
    import pyarrow.fs
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing",
                                 secret_key="testing", region="us-east-1", scheme="http")
    start = time.perf_counter()
    pyarrow.fs.copy_files(f"{storage}/{name}", f"{BUCKET}/searches/{name}", destination_filesystem=s3,
                          use_threads=True)
    print(f"copied {storage}/{name} to the S3 server in {time.perf_counter() - start:.1f} s", flush=True)
    return f"s3://{BUCKET}/searches", env, server


def status_seconds(tree: str, name: str, storage: str, env: dict[str, str]) -> float:
    """One `status` run in a fresh interpreter started in TREE (`python -m` puts the working folder first on the
    path); raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "search.cli", "status", name, "--storage", storage],
                          capture_output=True, text=True, env={**os.environ, **env, "PYTHONPATH": tree}, cwd=tree)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"status with {tree} failed: {proc.stderr.strip()[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage")
    parser.add_argument("name")
    parser.add_argument("trees", nargs="*", default=[str(ROOT)])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="read the folder from a local S3 server")
    args = parser.parse_args()
    storage, env, server = (args.storage, {}, None) if not args.s3 else s3_copy(args.storage, args.name)
    try:
        times: dict[str, list[float]] = {tree: [] for tree in args.trees}
        for _ in range(args.rounds):
            for tree in args.trees:
                times[tree].append(status_seconds(tree, args.name, storage, env))
    finally:
        if server is not None:
            server.stop()
    print(f"| code tree | `status` s on {'S3' if args.s3 else 'a local folder'}, each run | median |\n|---|---|---|")
    for tree, seconds in times.items():
        print(f"| {tree} | {', '.join(f'{s:.2f}' for s in seconds)} | {statistics.median(seconds):.2f} |")


if __name__ == "__main__":
    main()
