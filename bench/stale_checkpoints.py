"""Seconds a resume spends looking for stale checkpoints (`search.tune_ext.delete_stale_checkpoints`) in a search
folder of many trials on a local S3 server, for code trees run in turn (so that two versions are compared in one
run on the same machine).

    .venv/bin/python bench/stale_checkpoints.py [TREE ...] [--trials 1200] [--running 16] [--rounds 3]

The folder is made up as a search leaves it: per ended trial the six files Tune and the platform write (metrics,
results, parameters, progress, TensorBoard events), per running trial those and two checkpoints; it is written
locally, then copied to a moto S3 server on 127.0.0.1 in this process. Each TREE (default: this checkout) is put
first on PYTHONPATH of a fresh interpreter that times one call; nothing is stale, so every call only lists.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
from status_time import ROOT, s3_copy  # noqa: E402

FILES = ("metrics.jsonl", "result.json", "params.json", "params.pkl", "progress.csv", "events.out.tfevents.0")
PROBE = """
import json, sys, time, pyarrow.fs
from search.tune_ext import delete_stale_checkpoints
fs, root = pyarrow.fs.FileSystem.from_uri(sys.argv[1])
trials = json.loads(sys.argv[2])
start = time.perf_counter()
delete_stale_checkpoints(fs, root, trials)
print(time.perf_counter() - start)
"""


def make_folder(root: Path, trials: int, running: int) -> list[dict]:
    """Trial folders as a search leaves them; returns the trials as `read_state` gives them."""
    states = []
    for i in range(trials):
        folder = root / f"trial_{i:08x}"
        folder.mkdir(parents=True)
        for name in FILES:
            (folder / name).write_text("{}\n")
        status = "RUNNING" if i < running else "TERMINATED"
        if status == "RUNNING":
            for n in range(2):
                (folder / f"checkpoint_00000{n}").mkdir()
                (folder / f"checkpoint_00000{n}" / "state.pt").write_bytes(b"saved")
        states.append({"trial_id": f"{i:08x}", "dir": folder.name, "status": status})
    return states


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", default=[str(ROOT)], help="checkouts of this repository (default: this one)")
    p.add_argument("--trials", type=int, default=1200)
    p.add_argument("--running", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with tempfile.TemporaryDirectory() as tmp:
        trials = make_folder(Path(tmp) / "search" / "trials", args.trials, args.running)
        storage, env, server = s3_copy(tmp, "search")
    uri = f"{storage}/search/trials"
    seconds: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            proc = subprocess.run([sys.executable, "-c", PROBE, uri, json.dumps(trials)], capture_output=True,
                                  text=True, env={**os.environ, **env, "PYTHONPATH": tree}, cwd=tree, check=True)
            seconds[tree].append(float(proc.stdout.split()[-1]))
    server.stop()
    print(f"\n{args.trials} trial folders ({args.running} running, 2 checkpoints each) on a local S3 server\n")
    print("| code tree | seconds per call (median, min-max) |\n|---|---|")
    for tree, times in seconds.items():
        print(f"| {tree} | {statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f}) |")


if __name__ == "__main__":
    main()
