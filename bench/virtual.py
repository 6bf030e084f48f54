"""A search on a virtual clock: the platform's searcher and scheduler, driven by a discrete-event simulation.

`run_virtual` asks, reports and ends trials in the order Ray Tune's controller would, but in one process, with
no Ray runtime (only its scheduler classes) and no sleeping: each epoch of a trial ends when the surrogate's recorded seconds say it does. A search
then costs only what the searcher and the scheduler compute, so thousands of searches fit on a laptop.

Tune's sequence, mirrored here (ray.tune.execution.tune_controller):
- a free slot asks the searcher for a config, and the scheduler's `on_trial_add` sees the new trial;
- at each result the scheduler decides first; only on CONTINUE does the searcher see the result;
- a trial ends on STOP, after its last epoch, or on the epoch it diverges on: the scheduler's, then the
  searcher's `on_trial_complete` get its last result, and the slot asks for the next trial at once.
Tune's extra end-of-function result (a copy of the last one, marked done) reaches neither, so it is not replayed.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from ray.tune.schedulers import TrialScheduler

from search.ledger import METRIC
from search.trainable import MODE
from search.tune_ext import EPOCH, STUDY_KEY, DurableOptunaSearch, StudyMux

if TYPE_CHECKING:
    from surrogate import Surrogate


@dataclass
class SimTrial:
    """What Tune's schedulers read of a trial: its id, its config (with the study's name) and whether it was
    restored with results (never, here)."""

    trial_id: str
    config: dict[str, Any]
    has_reported_at_least_once: bool = False


@dataclass
class Running:
    """A trial in a slot: its surrogate curve and when it started."""

    trial: SimTrial
    mrr: np.ndarray
    seconds: np.ndarray
    diverged: int
    start: float


@dataclass
class VirtualRun:
    """One search on the virtual clock (times in the surrogate's recorded seconds, unscaled)."""

    regret: float  # (pool best - best final of a trial run to its last epoch without diverging) / pool best
    epochs: int  # epochs trained by every trial together
    wall_s: float  # virtual time from the first trial's start to the last trial's end
    busy_s: float  # slot-seconds spent training
    order: list[float]  # final MRR@20 of each trial in asking order; NaN for a trial that did not run to the end
    ran: list[int]  # epochs of each trial in asking order
    spans: list[tuple[float, float]]  # (start, end) of each trial in asking order
    decision_s: float  # wall seconds spent in the scheduler's on_trial_result
    decisions: int  # results the scheduler decided on (one per reported epoch)
    compute_s: float  # wall seconds the whole simulation took

    @property
    def decision_s_per_epoch(self) -> float:
        """The scheduler's overhead per reported epoch, what a real search pays on its driver for each result."""
        return self.decision_s / self.decisions if self.decisions else math.nan


class Simulation:
    """The state of one virtual search: the slots' trials, the pending epoch ends, and what has been measured."""

    def __init__(self, pool: Surrogate, scheduler: TrialScheduler, sampler: optuna.samplers.BaseSampler,
                 trials: int, study: str):
        self.pool, self.scheduler, self.trials, self.study = pool, scheduler, trials, study
        searcher = DurableOptunaSearch(pool.space, metric=METRIC, mode=MODE, sampler=sampler, n_epochs=pool.epochs,
                                       experiment=study)
        self.searcher = StudyMux({study: searcher}, {study: trials}, "shared", METRIC, MODE)
        self.running: list[Running] = []  # every trial asked, by asking order
        self.events: list[tuple[float, int, int]] = []  # (virtual time, trial index, epoch ending then)
        self.finals: dict[int, float] = {}
        self.ran: dict[int, int] = {}
        self.ends: dict[int, float] = {}
        self.decision_s, self.decisions = 0.0, 0

    def start(self, now: float) -> None:
        """Ask the searcher for the next trial, let the scheduler add it, and schedule its first epoch's end."""
        index = len(self.running)
        trial_id = f"{self.study}_{index:05d}"
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):
            raise RuntimeError(f"the searcher gave no config for trial {index + 1} of {self.trials}: {config!r}")
        trial = SimTrial(trial_id, config)
        self.scheduler.on_trial_add(None, trial)
        mrr, seconds, diverged = self.pool.curve({k: v for k, v in config.items() if k != STUDY_KEY})
        self.running.append(Running(trial, mrr, seconds, diverged, now))
        heapq.heappush(self.events, (now + float(seconds[0]), index, 1))

    def result(self, run: Running, epoch: int) -> dict[str, Any]:
        """What the trial reports after an epoch, as bench/search.py's simulated trial reports it to Tune."""
        if run.diverged and epoch >= run.diverged:
            return {METRIC: 0.0, EPOCH: epoch, "training_iteration": epoch, "diverged": 1}
        return {METRIC: float(run.mrr[epoch - 1]), EPOCH: epoch, "training_iteration": epoch}

    def decide(self, trial: SimTrial, result: dict[str, Any]) -> bool:
        """The scheduler's decision on a result (timed); True to stop the trial."""
        begin = time.perf_counter()
        decision = self.scheduler.on_trial_result(None, trial, result)
        self.decision_s += time.perf_counter() - begin
        self.decisions += 1
        if decision not in (TrialScheduler.CONTINUE, TrialScheduler.STOP):
            raise ValueError(f"the virtual engine runs CONTINUE and STOP only, not {decision!r}")
        return decision == TrialScheduler.STOP

    def step(self) -> None:
        """Process the earliest epoch end: report it, and end the trial or schedule its next epoch."""
        now, index, epoch = heapq.heappop(self.events)
        run = self.running[index]
        result = self.result(run, epoch)
        stop = self.decide(run.trial, result)
        if not stop:
            self.searcher.on_trial_result(run.trial.trial_id, result)
        if stop or epoch == self.pool.epochs or result.get("diverged"):
            self.end(now, index, result)
        else:
            heapq.heappush(self.events, (now + float(run.seconds[epoch]), index, epoch + 1))

    def end(self, now: float, index: int, result: dict[str, Any]) -> None:
        """Tell the scheduler, then the searcher, that the trial ended; its slot starts the next trial."""
        run = self.running[index]
        self.scheduler.on_trial_complete(None, run.trial, result)
        self.searcher.on_trial_complete(run.trial.trial_id, result)
        epoch = result[EPOCH]
        self.ran[index], self.ends[index] = epoch, now
        if epoch == self.pool.epochs and not result.get("diverged"):
            self.finals[index] = result[METRIC]
        if len(self.running) < self.trials:
            self.start(now)

    def outcome(self, compute_s: float) -> VirtualRun:
        """What the search found and what it cost."""
        asked = range(len(self.running))
        spans = [(self.running[i].start, self.ends[i]) for i in asked]
        best = max(self.finals.values(), default=0.0)
        return VirtualRun(regret=(self.pool.best_final - best) / self.pool.best_final,
                          epochs=sum(self.ran.values()), wall_s=max((e for _, e in spans), default=0.0),
                          busy_s=sum(e - s for s, e in spans), order=[self.finals.get(i, math.nan) for i in asked],
                          ran=[self.ran[i] for i in asked], spans=spans, decision_s=self.decision_s,
                          decisions=self.decisions, compute_s=compute_s)


def run_virtual(pool: Surrogate, scheduler: TrialScheduler, sampler: optuna.samplers.BaseSampler, concurrency: int,
                trials: int, study: str = "study") -> VirtualRun:
    """One search of `trials` trials, `concurrency` at a time, with the platform's searcher (TPE or another
    sampler behind DurableOptunaSearch and StudyMux) and the given Tune scheduler, on a virtual clock."""
    begin = time.perf_counter()
    simulation = Simulation(pool, scheduler, sampler, trials, study)
    for _ in range(min(concurrency, trials)):
        simulation.start(0.0)
    while simulation.events:
        simulation.step()
    return simulation.outcome(time.perf_counter() - begin)
