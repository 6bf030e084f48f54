"""Sparse checkpoints in a real search: a trial saves its training state only after ASHA's rungs and its last
epoch, a driver killed after an unsaved epoch resumes the trial from the older state and retrains exactly
what a run without the kill trains, and `status` prints the bytes of state written."""
import json
import os
import re
import signal
import subprocess
import time

import pyarrow.fs
import pytest

from gru4rec import Config, Trainer, load_session_data
from search.ledger import checkpoint_epochs, read_results
from search.settings import SearchError, SearchSettings
from search.tune_ext import STUDY_KEY, read_state

from rsc15 import BIN, DATA, SLOW_ON_DATA, SMALL_SPACE as SPACE

pytestmark = SLOW_ON_DATA
EPOCHS, RUNGS_AND_LAST = 4, [1, 3, 4]  # grace period 1, reduction factor 3: rungs at 1 and 3
# Tune snapshots its state every 0.25 s here (1 s by default): the kill waits for the snapshot that holds a
# trial's first epoch, and must still come before that trial's second epoch (about 1.5 s) has ended.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "0.25"}


def test_trials_save_at_rungs_and_end_and_a_kill_after_an_unsaved_epoch_replays_it_exactly(tmp_path, spawn):
    assert checkpoint_epochs(EPOCHS, 1, 3, 0) == RUNGS_AND_LAST
    space = tmp_path / "space.jsonl"
    space.write_text("".join(json.dumps(e) + "\n" for e in SPACE))
    store = tmp_path / "store"
    experiment = store / "ckpt" / "trials"

    def trials():
        try:
            return read_state(pyarrow.fs.LocalFileSystem(), str(experiment)) or []
        except (SearchError, OSError, KeyError):  # being written
            return []

    def results(trial):
        return read_results(pyarrow.fs.LocalFileSystem(), str(experiment / trial["dir"] / "metrics.jsonl"))

    common = ["--storage", store, "--local-cpus", "2", "--no-dashboard", "--quiet"]
    driver = spawn([BIN / "gru4rec-search", "run", "--train", DATA / "train_tr.tsv", "--valid", DATA / "train_valid.tsv",
                    "--train-full", DATA / "train_full.tsv", "--test", DATA / "test.tsv", "--name", "ckpt",
                    "--losses", "xe", "--modes", "shared", "--space", space, "--fixed", "n_sample=128,batch_size=32",
                    "--trials", "3", "--epochs", EPOCHS, "--max-concurrent", "1", "--grace-period", "1",
                    "--reduction-factor", "3", "--checkpoint-every", "0", "--no-cuda-graphs", "--top-k", "1",
                    "--seeds", "1", *common], "run.log", env=ENV)
    deadline = time.time() + 300
    killed = None
    while killed is None:
        # The driver dies just after a trial's second epoch, which saved no state, once Tune's snapshot holds the
        # first epoch's result (and so its checkpoint: without it Tune would rightly start the trial afresh).
        assert driver.poll() is None and time.time() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        killed = next((t for t in trials() if t["status"] == "RUNNING" and len(results(t)) == 2
                       and t["last_result"].get("training_iteration", 0) >= 1), None)
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # A trial's worker can outlive its driver for a few seconds and save further epochs; the resume then goes on
    # from the newest state it saved. What the worker left is read once it is gone.
    while subprocess.run(["pgrep", "-f", "ray::"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the killed driver's Ray workers are still running"
        time.sleep(0.2)
    before = results(killed)
    resumed_from = max(r["epoch"] for r in before if "checkpoint_bytes" in r)
    assert "after epochs 1, 3, 4" in (tmp_path / "run.log").read_text()
    resumed = spawn([BIN / "gru4rec-search", "resume", "ckpt", *common], "resume.log", env=ENV)
    assert resumed.wait(timeout=900) == 0, (tmp_path / "resume.log").read_text()[-4000:]

    written = 0
    for trial in trials():
        lines = results(trial)
        saved = [r["epoch"] for r in lines if "checkpoint_bytes" in r]
        assert saved == [e for e in RUNGS_AND_LAST if e <= lines[-1]["epoch"]], (trial["trial_id"], lines)
        written += sum(r["checkpoint_bytes"] for r in lines if "checkpoint_bytes" in r)

    # The killed trial went on from its newest saved state (epoch 1's, unless its worker outlived the driver and
    # saved a later one): the epochs after it trained again, as a run without the kill does.
    lines = results(next(t for t in trials() if t["trial_id"] == killed["trial_id"]))
    assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1)) and len(lines) >= 2
    assert lines[:resumed_from] == before[:resumed_from]
    assert all(a["time_total_s"] != b["time_total_s"] for a, b in zip(lines[resumed_from:], before[resumed_from:]))
    settings = SearchSettings.from_json((store / "ckpt" / "search.json").read_text(), "search.json")
    assert settings.checkpoint_every == 0 and settings.cuda_graphs is False  # kept for resume and the retrains
    params = {k: v for k, v in killed["config"].items() if k != STUDY_KEY}
    config = Config.from_dict({**settings.plans()[0].fixed, **params})
    train = load_session_data(DATA / "train_tr.tsv")
    valid = load_session_data(DATA / "train_valid.tsv", train.item_ids)
    uninterrupted = []
    Trainer(config, train, device="cpu", threads=1).fit(
        len(lines), valid=valid, callback=lambda info: uninterrupted.append(info.metrics.mrr[20]))
    assert [r["mrr@20"] for r in lines] == pytest.approx(uninterrupted, abs=1e-6)

    status = subprocess.run([BIN / "gru4rec-search", "status", "ckpt", "--storage", store], capture_output=True,
                            text=True, env=ENV).stdout
    assert re.search(rf"written: {written / 2**20:,.1f} MB of training states", status), status
