"""The dataset-size benchmark, run as CI runs it (--quick), checked against the cached files it measured."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru4rec import Config, Trainer, load_session_data
from gru4rec.checkpoint import save_training_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))
import scale  # noqa: E402

# Two states of the same config and data differ only in the text of the sample store's read position
# in the file's JSON header (a few digits, padded to 8 bytes).
HEADER_SLACK = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "scale.json"
    command = [sys.executable, "bench/scale.py", "--quick", "--cache", str(tmp / "cache"), "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    entry = results["sizes"]["0.1M"]
    return {"stdout": proc.stdout, "stderr": proc.stderr, "out": out, "entry": entry,
            "jobs": entry["codes"]["this"]["jobs"], "data": Path(entry["data"])}


def test_the_table_has_a_row_per_measurement_and_no_failure(run):
    lines = run["stdout"].splitlines()
    for row in scale.ROWS:
        matching = [line for line in lines if line.startswith(f"| {row.label} | ")]
        assert len(matching) == 1, row.label
        assert "failed" not in matching[0] and "stopped" not in matching[0]
    assert "[0.1M] generating" in run["stderr"]


def test_event_counts_and_array_bytes_match_the_cached_files(run):
    for split in scale.SPLITS:
        frame = pd.read_parquet(run["data"] / f"{split}.parquet")
        for fmt in scale.FORMATS:
            figures = run["jobs"][f"load {split}.{fmt}"]
            assert figures["events"] == len(frame)  # every test item occurs in train_full: nothing dropped
            assert figures["sessions"] == frame["SessionId"].nunique()
            items, offsets = np.dtype(figures["items_dtype"]), np.dtype(figures["offsets_dtype"])
            assert items.kind == offsets.kind == "i"
            assert figures["array_bytes"] == len(frame) * items.itemsize + (figures["sessions"] + 1) * offsets.itemsize
            assert figures["peak_bytes"] >= figures["held_bytes"] > 0


def test_checkpoint_bytes_match_a_state_saved_here(run, tmp_path):
    train = load_session_data(run["data"] / "train_full.parquet")
    trainer = Trainer(Config(**scale.CONFIG), train, device="cpu", threads=1)
    trainer.start_epoch()
    trainer.run_step(0)  # fills the sample store, whose generator state the file holds
    save_training_state(tmp_path / "state", trainer.state_dict())
    measured = run["jobs"]["train"]["checkpoint_bytes"]
    assert abs(measured - (tmp_path / "state").stat().st_size) <= HEADER_SLACK
    # Parameters, Adagrad sums and momenta (momentum > 0) in float32, plus two generator states and the header.
    parameters = sum(p.numel() for p in trainer.model.state_dict().values())
    assert 3 * 4 * parameters <= measured <= 3 * 4 * parameters + (64 << 10)


def test_speeds_are_positive_and_finite(run):
    train = run["jobs"]["train"]
    for key in ("events_per_s", "minibatches_per_s", "predictions_per_s"):
        assert math.isfinite(train[key]) and train[key] > 0, key
    assert train["predictions"] > 0 and train["timed_steps"] > 0
    assert run["jobs"]["baselines"]["seconds"] > 0


def test_report_only_prints_the_same_tables(run):
    proc = subprocess.run([sys.executable, "bench/scale.py", "--report-only", "--quick", "--out", str(run["out"])],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == run["stdout"].strip()


def test_a_trial_writes_the_states_of_the_checkpoint_rule_and_the_driver_was_measured(run):
    from search.ledger import checkpoint_epochs
    from search.settings import CHECKPOINT_EVERY
    train = run["jobs"]["train"]
    assert train["trial_states"] == len(checkpoint_epochs(10, 1, 3.0, CHECKPOINT_EVERY)) == 4
    assert train["trial_write_bytes"] == 4 * train["checkpoint_bytes"]
    driver = run["jobs"]["driver"]
    # The driver is a Python process with torch and Ray's client loaded, and its peak is at least what it held.
    assert 100e6 < driver["driver_trial_bytes"] <= driver["driver_peak_bytes"]
