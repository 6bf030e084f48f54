"""One trial: the real GRU4Rec trainer on the trial's device, recording validation MRR@20, Recall@20 and the loss
after every epoch in its folder, and reporting MRR@20 to Tune.

The reports of the search's checkpoint epochs (ASHA's rungs, the last epoch, and every few epochs between)
carry a checkpoint with the exact training state (safetensors), so Ray can resume a trial after a driver
crash or retry it after a worker failure from its last saved epoch. A trial gives its memory back when it
ends: Ray reuses the worker process for the next one.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs
import ray
import torch
from ray import tune
from ray.util.metrics import Gauge
from tensorboardX import SummaryWriter

from gru4rec import Config, EpochInfo, SessionData, Trainer, TrainingError, free_memory
from gru4rec.checkpoint import load_training_state, save_training_state

from .ledger import METRIC, METRICS_FILE, RECALL, read_results
from .settings import write_atomically
from .tune_ext import EPOCH, STUDY_KEY, trial_storage

MODE = "max"
TIE_MODE = "standard"  # for validation in trials and for the test evaluation of the retrained model
STATE_FILE = "training_state.safetensors"
# For tests and benchmarks only, never a user option: "module:function" that a worker runs instead of
# `run_trial`, with the same arguments (bench/replay.py answers from recorded learning curves).
TRIAL_BODY_VARIABLE = "GRU4REC_SEARCH_TRIAL_BODY"

logger = logging.getLogger(__name__)
_gauges: dict[str, Gauge] = {}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares: the search and study names, the fixed parameters, the epochs
    after which a trial saves its training state, and whether CUDA steps are captured in graphs."""

    search: str
    study: str
    fixed: dict[str, Any]
    checkpoint_epochs: frozenset[int]
    cuda_graphs: bool = True


def trial_config(setup: TrialSetup, params: dict[str, Any]) -> Config:
    """The full GRU4Rec config of a trial: the study's fixed parameters plus the sampled ones."""
    return Config.from_dict({**setup.fixed, **params})


def graphs_option(cuda_graphs: bool) -> bool | None:
    """The Trainer's `cuda_graphs` for a search's setting: the library's default (graphs on CUDA), or off."""
    return None if cuda_graphs else False


def device_for_task() -> str:
    """'cuda' when Ray gave this task or actor a GPU (share), else 'cpu'."""
    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _gauge(name: str, description: str) -> Gauge:
    """A Ray metric for the dashboard, created once per worker process (actors are reused across trials)."""
    if name not in _gauges:
        _gauges[name] = Gauge(name, description=description, tag_keys=("search", "study", "trial"))
    return _gauges[name]


_data: dict[str, SessionData] = {}


def shared_data(refs: dict[str, ray.ObjectRef]) -> dict[str, SessionData]:
    """The splits from the object store, fetched once per worker process (actors are reused across trials)."""
    for name, ref in refs.items():
        key = f"{name}:{ref.hex()}"
        if key not in _data:
            _data[key] = ray.get(ref)
    return {name: _data[f"{name}:{ref.hex()}"] for name, ref in refs.items()}


class TrialLog:
    """A trial's record of its epochs, written by the trial itself into its folder of the search's storage before
    it reports each epoch: metrics.jsonl (what the ledger, `status` and a resume read) and TensorBoard curves
    (MRR@20, Recall@20, loss). The driver writes nothing per trial, so a snapshot of the experiment does not
    upload every trial's logs again.
    """

    CURVES = (METRIC, RECALL, "loss")

    def __init__(self, resumed_epoch: int, device: str):
        self.fs, self.folder = trial_storage()
        recorded = read_results(self.fs, f"{self.folder}/{METRICS_FILE}")
        self.history = [r for r in recorded if r["epoch"] <= resumed_epoch]
        self.redone = len(recorded) - len(self.history)  # epochs recorded past the checkpoint, trained again
        self.device = device
        self._clock = time.perf_counter()
        self._events = tempfile.TemporaryDirectory(prefix="gru4rec-curves-")
        self._writer = SummaryWriter(self._events.name, flush_secs=3600)

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The epoch's line in metrics.jsonl and its points on the curves, durable in the storage; returns what the
        trial reports to Tune of it (`reported`)."""
        now = time.perf_counter()
        spent = (self.history[-1]["time_total_s"] if self.history else 0.0) + now - self._clock
        self._clock = now
        entry = {**entry, "training_iteration": entry["epoch"], "device": self.device, "time_total_s": spent,
                 "pid": os.getpid()}
        self.history.append(entry)
        write_atomically(self.fs, f"{self.folder}/{METRICS_FILE}",
                         "".join(json.dumps(r) + "\n" for r in self.history).encode())
        for key in self.CURVES:
            if key in entry:
                self._writer.add_scalar(key, entry[key], entry["epoch"])
        self._writer.flush()
        for name in os.listdir(self._events.name):  # one small event file per run of the trial
            write_atomically(self.fs, f"{self.folder}/{name}", Path(self._events.name, name).read_bytes())
        return self.reported(entry)

    def reported(self, entry: dict[str, Any]) -> dict[str, Any]:
        """What Tune is told of an epoch: what its scheduler, the searcher and the ledger's end read (MRR@20, the
        epoch, the device, and divergence when there is one). The rest stays in metrics.jsonl: the driver holds
        running statistics of every number a trial reports, for every trial (about 3.5 kB each per trial), and
        writes them in each snapshot."""
        result = {METRIC: entry[METRIC], EPOCH: entry["epoch"], "device": self.device}
        if entry.get("diverged"):
            result["diverged"] = 1
        return result

    def report_if_done(self, n_epochs: int) -> bool:
        """Report the last epoch again when the trial resumed from its last epoch's state (saved by a worker that
        outlived a killed driver, after Tune's snapshot), so that Tune and the searcher hear how it ended."""
        if not self.history or self.history[-1]["epoch"] < n_epochs:
            return False
        tune.report(self.reported(self.history[-1]))
        return True

    def close(self) -> None:
        self._writer.close()
        self._events.cleanup()


def resume_candidates() -> list[tune.Checkpoint]:
    """The checkpoints a trial may resume from, newest first: those in the trial's folder, then Tune's if it is not
    among them. The folder's newest may be newer than Tune's (a driver killed after the trial saved it, before
    Tune's next snapshot), and Tune's may be a stand-in for one deleted since (`stand_in_checkpoints`); a
    checkpoint that cannot be loaded (a save cut short) gives way to the one before."""
    known = tune.get_checkpoint()
    fs, folder = trial_storage()
    saved = sorted((e.path for e in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
                    if e.type == pyarrow.fs.FileType.Directory and e.base_name.startswith("checkpoint_")),
                   reverse=True)
    found = [tune.Checkpoint(path, filesystem=fs) for path in saved]
    if known is not None and known.path.rstrip("/") not in saved:
        found.append(known)
    return found


def run_trial(params: dict[str, Any], setup: TrialSetup, data: dict[str, ray.ObjectRef]) -> None:
    """Train one sampled config epoch by epoch, resuming from Tune's checkpoint if there is one."""
    config = trial_config(setup, {k: v for k, v in params.items() if k != STUDY_KEY})
    splits = shared_data(data)
    train, valid = splits["train"], splits["valid"]
    # Torch threads within the trial's CPUs: oversubscribed OpenMP threads spin and slow every trial down.
    # With several CPUs the trainer times 1, half and all of them on its first steps and keeps the fastest.
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(cpus)
    device = device_for_task()
    trainer = Trainer(config, train, device=device, threads=1 if cpus == 1 else None,
                      cuda_graphs=graphs_option(setup.cuda_graphs))
    for checkpoint in resume_candidates():
        try:
            with checkpoint.as_directory() as directory:
                trainer.load_state_dict(load_training_state(Path(directory) / STATE_FILE))
            break
        except Exception as e:  # noqa: BLE001 (a save cut short by a kill: fall back on the one before)
            logger.warning("cannot resume from %s (%s); trying an older checkpoint", checkpoint.path, e)
    tags = {"search": setup.search, "study": setup.study, "trial": tune.get_context().get_trial_id()}
    mrr_gauge = _gauge("gru4rec_trial_mrr_at_20", "validation MRR@20 of a trial, set after every epoch")
    recall_gauge = _gauge("gru4rec_trial_recall_at_20", "validation Recall@20 of a trial, set after every epoch")

    log = TrialLog(trainer.epoch, device)

    def report(info: EpochInfo) -> None:
        metrics = info.metrics
        mrr_gauge.set(metrics.mrr[20], tags=tags)
        recall_gauge.set(metrics.recall[20], tags=tags)
        result = {METRIC: metrics.mrr[20], RECALL: metrics.recall[20], "epoch": info.epoch, "loss": info.loss,
                  "epoch_seconds": info.seconds, "events_per_s": info.events_per_s, "diverged": 0}
        if info.epoch not in setup.checkpoint_epochs:
            tune.report(log.record(result))
            return
        with tempfile.TemporaryDirectory(prefix="gru4rec-trial-") as directory:
            path = Path(directory) / STATE_FILE
            save_training_state(path, trainer.state_dict())
            tune.report(log.record({**result, "checkpoint_bytes": path.stat().st_size}),
                        checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        if not log.report_if_done(config.n_epochs):
            trainer.fit(config.n_epochs, callback=report, valid=valid, cutoffs=(20,), mode=TIE_MODE)
    except TrainingError:
        # A diverged config is a bad config, not a broken worker: score it 0 so TPE learns to avoid it.
        tune.report(log.record({METRIC: 0.0, RECALL: 0.0, "epoch": trainer.epoch + 1, "diverged": 1}))
    finally:
        log.close()


@functools.cache
def trial_body() -> Callable[[dict[str, Any], TrialSetup, dict[str, ray.ObjectRef]], None]:
    """What a trial runs: `run_trial`, unless the worker's environment names a replacement in
    GRU4REC_SEARCH_TRIAL_BODY (read once per worker process, which Ray reuses across trials)."""
    target = os.environ.get(TRIAL_BODY_VARIABLE)
    if not target:
        return run_trial
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def make_trainable(setups: dict[str, TrialSetup], data: dict[str, ray.ObjectRef],
                   resources: Callable[[dict], Any]) -> Callable:
    """The Tune trainable of a search: a trial's config names its study; the splits are in the object store;
    `resources` gives a trial's resource request from its config (GPU shares can differ by study)."""
    def gru4rec_trial(params: dict[str, Any]) -> None:
        try:
            trial_body()(params, setups[params[STUDY_KEY]], data)
        finally:
            free_memory(device_for_task())

    return tune.with_resources(gru4rec_trial, resources)
