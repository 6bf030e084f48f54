"""Bench-only hooks for running the real search at full size on a small machine (bench/driver_scale.py).

- `replay_trial`: a trial body for GRU4REC_SEARCH_TRIAL_BODY=bench.replay:replay_trial. It answers from the
  surrogate of recorded learning curves (bench/surrogate.py on bench/data/curves.parquet) instead of training,
  and sleeps each epoch's recorded time scaled so that an epoch lasts DRIVER_SCALE_EPOCH_S seconds on average.
  Towards Tune it behaves as `search.trainable.run_trial`: a report per epoch with the same keys (but
  events_per_s, which the curves lack), the epoch's line in the trial's metrics file first, a checkpoint (a
  small file) at the search's checkpoint epochs, and a resume from Tune's checkpoint. A study is replayed from
  the rsc15_100k pool of its loss; its embedding mode does not matter to the replay.
- `python -m bench.replay ARGS`: `gru4rec-search ARGS` (search.cli.main) with timing probes on the driver's Tune
  (the experiment snapshot and its upload, the creation of a trial, the end of a trial) and on the end of data
  loading.

Both append events to the JSON-lines file DRIVER_SCALE_LOG (one short line per write, opened in append mode,
so that the driver and every worker can share it): "driver", "loaded", "snapshot", "upload", "created", "ended"
from the driver, "begin" from a trial.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from ray import tune

from bench.surrogate import Surrogate
from search.ledger import METRIC, METRICS_FILE, RECALL, read_results
from search.settings import write_atomically
from search.spaces import default_space_file, load_space
from search.trainable import TrialLog, TrialSetup, resume_candidates
from search.tune_ext import STUDY_KEY, trial_storage

CURVES = Path(__file__).resolve().parent / "data" / "curves.parquet"
POOLS = {"cross-entropy": ("rsc15_100k", "xe_shared"), "bpr-max": ("rsc15_100k", "bprmax_shared")}
LOG_VARIABLE = "DRIVER_SCALE_LOG"
EPOCH_SECONDS_VARIABLE = "DRIVER_SCALE_EPOCH_S"
STATE_FILE = "replay_state.json"


def log(event: str, **fields: Any) -> None:
    """Append one event (with the wall time and this process's id) to the bench's log, if it has one."""
    path = os.environ.get(LOG_VARIABLE)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}) + "\n")


# -- the trial (in a Ray worker) --------------------------------------------------------------------------

@functools.cache
def curves(loss: str) -> dict[str, Surrogate]:
    """Surrogates of the loss's pool for MRR@20, Recall@20 and the training loss, built once per worker."""
    dataset, study = POOLS[loss]
    frame = pd.read_parquet(CURVES)
    pool = frame[(frame["dataset"] == dataset) & (frame["study"] == study)]
    space = load_space(default_space_file(loss))
    return {column: Surrogate(pool.assign(mrr=pool[column]), space) for column in ("mrr", "recall", "loss")}


def resumed_epoch() -> int:
    """The last epoch of the checkpoint this trial resumes from (as `run_trial` chooses it), 0 without one."""
    for checkpoint in resume_candidates():
        try:
            with checkpoint.as_directory() as directory:
                return json.loads((Path(directory) / STATE_FILE).read_text())["epoch"]
        except (OSError, ValueError, KeyError):  # a save cut short by a kill
            continue
    return 0


def replay_trial(params: dict[str, Any], setup: TrialSetup, data: dict[str, Any]) -> None:
    """One trial from the recorded curves: per epoch, sleep the scaled epoch time, record, report (and save a
    small checkpoint at the search's checkpoint epochs), resuming after Tune's checkpoint if there is one."""
    pools = curves(setup.fixed["loss"])
    n_epochs = int(setup.fixed["n_epochs"])
    if n_epochs != pools["mrr"].epochs:
        raise ValueError(f"the recorded curves have {pools['mrr'].epochs} epochs; run the search with that --epochs")
    sampled = {k: v for k, v in params.items() if k != STUDY_KEY}
    mrr, seconds, diverged = pools["mrr"].curve(sampled)
    recall, loss = pools["recall"].curve(sampled)[0], pools["loss"].curve(sampled)[0]
    scale = float(os.environ[EPOCH_SECONDS_VARIABLE]) / pools["mrr"].mean_epoch_seconds
    first = resumed_epoch()
    trial_log = TrialLog(first, "cpu")
    log("begin", trial=tune.get_context().get_trial_id(), study=setup.study, epoch=first, redone=trial_log.redone)
    try:
        if not trial_log.report_if_done(n_epochs):
            replay_epochs(first, n_epochs, setup, (mrr, recall, loss, seconds * scale, diverged), trial_log)
    finally:
        trial_log.close()


def replay_epochs(first: int, n_epochs: int, setup: TrialSetup, curve: tuple, trial_log: TrialLog) -> None:
    """The epochs after `first`: sleep, record, report, with a small checkpoint at the search's saved epochs."""
    mrr, recall, loss, seconds, diverged = curve
    for epoch in range(first + 1, n_epochs + 1):
        slept = seconds[epoch - 1]
        time.sleep(slept)
        if diverged and epoch >= diverged:
            tune.report(trial_log.record({METRIC: 0.0, RECALL: 0.0, "epoch": epoch, "diverged": 1}))
            return
        result = {METRIC: float(mrr[epoch - 1]), RECALL: float(recall[epoch - 1]), "epoch": epoch,
                  "loss": float(loss[epoch - 1]), "epoch_seconds": slept, "diverged": 0}
        if epoch not in setup.checkpoint_epochs:
            tune.report(trial_log.record(result))
            continue
        with tempfile.TemporaryDirectory(prefix="gru4rec-replay-") as directory:
            state = Path(directory) / STATE_FILE
            state.write_text(json.dumps({"epoch": epoch}))
            tune.report(trial_log.record({**result, "checkpoint_bytes": state.stat().st_size}),
                        checkpoint=tune.Checkpoint.from_directory(directory))


# -- the driver's probes ----------------------------------------------------------------------------------

def probe_snapshots() -> None:
    """Log the seconds of every experiment snapshot Tune takes (writing its state and starting the upload)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    original = _ExperimentCheckpointManager.sync_up_experiment_state

    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        before, start = self._last_save_time, time.perf_counter()
        original(self, *args, **kwargs)
        if self._last_save_time != before:  # not skipped as too soon after the previous one
            log("snapshot", seconds=time.perf_counter() - start)

    _ExperimentCheckpointManager.sync_up_experiment_state = timed


def probe_uploads() -> None:
    """Log the seconds of each upload of Tune's experiment folder (Tune's syncer uploads it in the background after
    a snapshot; until the upload is done the storage holds the previous snapshot, or a part of each)."""
    import ray.train._internal.storage as storage
    original = storage._upload_to_fs_path

    def timed(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            original(*args, **kwargs)
        finally:
            log("upload", seconds=time.perf_counter() - start)

    storage._upload_to_fs_path = timed


def probe_trial_creation() -> None:
    """Log each trial Tune creates: when it asked the searcher, and how long the suggestion took."""
    from ray.tune.search.search_generator import SearchGenerator
    original = SearchGenerator.create_trial_if_possible

    def timed(self: Any, spec: dict) -> Any:
        asked, start = time.time(), time.perf_counter()
        trial = original(self, spec)
        if trial is not None:
            log("created", trial=trial.trial_id, study=trial.config.get(STUDY_KEY), asked=asked,
                seconds=time.perf_counter() - start)
        return trial

    SearchGenerator.create_trial_if_possible = timed


def probe_trial_ends() -> None:
    """Log each trial's end as Tune's callbacks hear of it (after the searcher has told Optuna)."""
    from ray.tune.callback import CallbackList

    def wrap(name: str) -> None:
        original = getattr(CallbackList, name)

        def ended(self: Any, *args: Any, **kwargs: Any) -> None:
            trial = kwargs["trial"]
            log("ended", trial=trial.trial_id, study=trial.config.get(STUDY_KEY), error=name == "on_trial_error")
            original(self, *args, **kwargs)

        setattr(CallbackList, name, ended)

    wrap("on_trial_complete")
    wrap("on_trial_error")


def probe_data_loading() -> None:
    """Log the moment the driver has loaded the search's data (resume times count from there)."""
    from search.study import SearchData
    original = SearchData.load.__func__

    def load(cls: type, *args: Any, **kwargs: Any) -> Any:
        data = original(cls, *args, **kwargs)
        log("loaded")
        return data

    SearchData.load = classmethod(load)


def main() -> int:
    """`gru4rec-search` with the driver's probes installed."""
    log("driver", argv=sys.argv[1:])
    for probe in (probe_snapshots, probe_uploads, probe_trial_creation, probe_trial_ends, probe_data_loading):
        probe()
    from search.cli import main as search_main
    return search_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
