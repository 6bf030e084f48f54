"""`make demo`: a small real search end to end on generated data, in a few minutes on 2 cores.

Two studies (cross-entropy and BPR-max, shared embedding) x 6 trials x 3 epochs on a local Ray, ASHA stopping
poor trials after each epoch, then the choice between each study's two best configs over two seeds, the retrain of
the winner on train_full, the test evaluation and the exports, all through the same `gru4rec-search run` as a real
search.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from gru4rec.datasets.synthetic import SyntheticSpec, write_splits

from . import cli

OUT = Path("demo-output")
NAME = "demo"
# A small space (the published ones go up to 512 units); a user's own space file looks just like this.
SPACE = [
    {"name": "layers", "dtype": "int", "values": [32, 96], "step": 32},
    {"name": "batch_size", "dtype": "int", "values": [32, 128], "step": 32},
    {"name": "learning_rate", "dtype": "float", "values": [0.02, 0.2], "step": 0.01},
    {"name": "dropout_p_hidden", "dtype": "float", "values": [0.0, 0.5], "step": 0.05},
    {"name": "momentum", "dtype": "float", "values": [0.0, 0.6], "step": 0.05},
]


def main() -> int:
    """Generate data, run the search, print the table and where everything is."""
    start = time.perf_counter()
    splits = write_splits(OUT / "data", SyntheticSpec(n_events=30_000, days=7, seed=0))  # a week: ~3k test events
    space = OUT / "demo_space.jsonl"
    space.write_text("".join(json.dumps(entry) + "\n" for entry in SPACE))
    storage = OUT / "searches"
    shutil.rmtree(storage / NAME, ignore_errors=True)  # the previous demo's results
    print(f"data: {OUT / 'data'} (synthetic sessions); space: {space}")
    status = cli.main([
        "run", "--train", str(splits["train_tr"]), "--valid", str(splits["train_valid"]),
        "--train-full", str(splits["train_full"]), "--test", str(splits["test"]), "--name", NAME,
        "--losses", "xe,bpr-max", "--modes", "shared", "--trials", "6", "--epochs", "3", "--space", str(space),
        "--fixed", "n_sample=256", "--grace-period", "1", "--reduction-factor", "2", "--storage", str(storage),
        "--top-k", "2", "--seeds", "2", "--no-dashboard", "--quiet"])
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; try: gru4rec-search status {NAME} "
          f"--storage {storage}")
    return status


if __name__ == "__main__":
    sys.exit(main())
