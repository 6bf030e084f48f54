"""The trial ledger: one typed record per trial, the only place where trial outcomes are derived.

Built from a study's Tune experiment folder (Tune's saved trial statuses and configs, with the trials a
resume kept because they ended after Tune's last snapshot, and each trial's metrics.jsonl, one line per
epoch, which the trial itself writes to the storage before it reports the epoch: Tune's own result.json
reaches the storage only with the driver's next sync); read by `status`, finalize, export, the plots and
the searcher.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

import pandas as pd
import pyarrow.fs

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
METRIC = "mrr@20"
RECALL = "recall@20"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


class Outcome(str, Enum):
    COMPLETE = "complete"
    STOPPED = "stopped early"
    DIVERGED = "diverged"
    FAILED = "failed"
    RUNNING = "running"


def classify(status: str, results: list[dict[str, Any]], n_epochs: int) -> Outcome:
    """The outcome of a trial from its Tune status and the results it reported (in order)."""
    if status in UNFINISHED:
        return Outcome.RUNNING
    if status == "ERROR":
        return Outcome.FAILED
    if any(r.get("diverged") for r in results):
        return Outcome.DIVERGED
    if results and results[-1].get("epoch", 0) >= n_epochs:
        return Outcome.COMPLETE
    return Outcome.STOPPED


@dataclass
class TrialRecord:
    """One trial: how it ended, what it scored after each epoch, what it cost."""

    study: str
    trial_id: str
    outcome: Outcome
    params: dict[str, Any]
    mrr: list[float] = field(default_factory=list)  # validation MRR@20 after each epoch (0 once diverged)
    recall: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""
    checkpoint_bytes: int = 0  # training states the trial wrote to the storage, in bytes

    @property
    def epochs(self) -> int:
        return len(self.mrr)

    @property
    def final_mrr(self) -> float | None:
        """The MRR@20 the trial ended with (0 for a diverged trial, None if it reported nothing)."""
        if self.outcome == Outcome.DIVERGED:
            return 0.0
        return self.mrr[-1] if self.mrr else None

    @property
    def final_recall(self) -> float | None:
        if self.outcome == Outcome.DIVERGED:
            return 0.0
        return self.recall[-1] if self.recall else None

    @property
    def ended(self) -> bool:
        return self.outcome != Outcome.RUNNING


def read_results(fs: pyarrow.fs.FileSystem, path: str) -> list[dict[str, Any]]:
    """Every line of a trial's metrics file; a truncated last line (a full disk) is skipped with a warning."""
    try:
        with fs.open_input_stream(path) as f:
            text = f.readall().decode(errors="replace")
    except (FileNotFoundError, OSError):
        return []
    results = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("%s: line %d is truncated; skipped", path, number)
                continue
            raise
    return results


def record(study: str, trial: dict[str, Any], results: list[dict[str, Any]], n_epochs: int,
           space: Iterable[str]) -> TrialRecord:
    """The record of one trial from its saved Tune state ({trial_id, status, config}) and its results."""
    outcome = classify(trial["status"], results, n_epochs)
    by_epoch: dict[int, dict[str, Any]] = {}
    for r in results:  # an epoch trained again after a resume from an older checkpoint: the later line counts
        if METRIC in r and not r.get("diverged"):
            by_epoch[int(r.get("training_iteration", len(by_epoch) + 1))] = r
    epochs = [by_epoch[k] for k in sorted(by_epoch)]
    last = results[-1] if results else trial.get("last_result") or {}
    return TrialRecord(study=study, trial_id=trial["trial_id"], outcome=outcome,
                       params={k: trial["config"][k] for k in space if k in trial["config"]},
                       mrr=[r[METRIC] for r in epochs], recall=[r.get(RECALL, 0.0) for r in epochs],
                       seconds=float(last.get("time_total_s", 0.0)), device=str(last.get("device", "")),
                       checkpoint_bytes=sum(int(r.get("checkpoint_bytes", 0)) for r in results))


def counts(records: list[TrialRecord]) -> dict[Outcome, int]:
    """Trials per outcome."""
    found = {outcome: 0 for outcome in Outcome}
    for r in records:
        found[r.outcome] += 1
    return found


def best(records: list[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest final MRR@20 among those that ran every epoch (any that scored if none did)."""
    complete = [r for r in records if r.outcome == Outcome.COMPLETE and r.final_mrr is not None]
    pool = complete or [r for r in records if r.outcome != Outcome.FAILED and r.final_mrr is not None]
    return max(pool, key=lambda r: r.final_mrr, default=None)


def rung_epochs(n_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA compares trials (its rungs), below the last epoch."""
    rungs, epoch = [], grace_period
    while epoch < n_epochs:
        rungs.append(int(epoch))
        epoch *= reduction_factor
        epoch = int(round(epoch)) if abs(epoch - round(epoch)) < 1e-9 else int(epoch) + 1
    return sorted(set(rungs))


def checkpoint_epochs(n_epochs: int, grace_period: int, reduction_factor: float, every: int) -> list[int]:
    """The epochs after which a trial saves its training state: ASHA's rungs, the last epoch, and enough
    others that no more than `every` epochs pass between two (0: rungs and the last epoch only).

    A resumed trial continues from its last saved epoch, so with a state at every rung a resume never
    replays a rung ASHA has already decided on; `every` bounds the epochs a kill can cost.
    """
    marks = sorted(set(rung_epochs(n_epochs, grace_period, reduction_factor)) | {n_epochs})
    saved, last = [], 0
    for mark in marks:
        while every and mark - last > every:
            last += every
            saved.append(last)
        saved.append(mark)
        last = mark
    return saved


def rung_correlations(records: list[TrialRecord], n_epochs: int, grace_period: int,
                      reduction_factor: float) -> dict[str, float | None]:
    """Spearman rho between each rung's MRR@20 and the final one, over the trials that ran every epoch.

    A low rho means the rung ranks configs differently from their final ranking: ASHA is then
    stopping configs that would have ended well. None where fewer than three trials completed.
    """
    complete = [r for r in records if r.outcome == Outcome.COMPLETE and len(r.mrr) >= n_epochs]
    found: dict[str, float | None] = {}
    for epoch in rung_epochs(n_epochs, grace_period, reduction_factor):
        if len(complete) < 3:
            found[str(epoch)] = None
            continue
        at_rung = pd.Series([r.mrr[epoch - 1] for r in complete])
        final = pd.Series([r.mrr[-1] for r in complete])
        rho = at_rung.rank().corr(final.rank())  # Spearman's rho: Pearson's r of the ranks
        found[str(epoch)] = None if pd.isna(rho) else float(rho)
    return found
