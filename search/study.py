"""The search runner: the studies (one per loss x embedding mode, each its own durable Optuna study) run
as one Ray Tune experiment, sharing its trial slots.

A search runs (or, after a stop, continues) until every study has its asked number of ended trials;
ASHA stops poor trials after each epoch within their study, a trial's checkpoints go once it has
ended, and the searchers' record of every trial survives the driver in the Optuna storage.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import optuna
import pyarrow.fs
import ray
from ray.tune import Callback, CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

from gru4rec import SessionData, free_memory, load_session_data
from gru4rec.checkpoint import training_state_bytes
from gru4rec.config import Config

from .cluster import Resources
from .journal import replica
from .ledger import UNFINISHED
from .progress import study_progress
from .settings import EXPERIMENT, JOURNAL_FILE, SearchError, SearchSettings, Store
from .spaces import StudyPlan
from .trainable import METRIC, MODE, TrialSetup, make_trainable
from .tune_ext import (EPOCH, FINISHED, SET_ASIDE, STUDY_KEY, CheckpointJanitor, DurableOptunaSearch, StudyASHA, StudyMux,
                       adopt_kept, delete_stale_checkpoints, drop_older_sessions, end_finished_trials,
                       newest_searcher_state, optuna_outcomes, quiet_result_grid, read_state, reopen_search,
                       replace_searcher, searcher_state_from_studies, set_aside_restarts, stand_in_checkpoints, trial_dirname,
                       write_kept)

logger = logging.getLogger(__name__)

# Tune's warning about snapshots less than 5 s apart is expected with short periods (see snapshot_period), so it
# is off. Tune's own per-trial logs are off too: each snapshot uploads everything the driver wrote, and the
# trials write their metrics and TensorBoard curves themselves (trainable.TrialLog).
TUNE_ENVIRONMENT = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
# Tune's experiment state takes 28 KB per trial (33.3 MB at 1,200 trials, bench/driver_scale.py), and every
# snapshot writes all of it: at one per second a 1,200-trial search wrote 46 GB for an 80 MB folder.
STATE_BYTES_PER_TRIAL = 28_000
SNAPSHOT_BYTES_PER_S = 100_000  # what the snapshots may write, on average, once the search is full size
MAX_SNAPSHOT_PERIOD_S = 300
KEEP_CHECKPOINTS = 2  # per running trial (CheckpointJanitor): its newest, and the one before while one is saved


def snapshot_period(trials: int) -> int:
    """Seconds between Tune's snapshots of a search of `trials` trials in all: as short as writes of
    SNAPSHOT_BYTES_PER_S allow at its full size, between 1 s and 5 minutes.

    A kill loses what happened since the last snapshot only in part: Optuna's record of ended trials and the
    trials' own newest checkpoints are kept, so what is lost is the work of trials started after it and still
    running (they are run again).
    """
    return int(min(MAX_SNAPSHOT_PERIOD_S, max(1, round(trials * STATE_BYTES_PER_TRIAL / SNAPSHOT_BYTES_PER_S))))


def journal_path(store: Store) -> str:
    """The Optuna journal file: in the search folder, or (for URI storage) this host's copy, checked against
    the search folder first (see search/journal.py)."""
    return store.path(JOURNAL_FILE) if store.local else str(replica(store).local)


def optuna_storage(settings: SearchSettings, store: Store) -> optuna.storages.BaseStorage:
    """The search's Optuna storage: the RDB of --optuna-storage, else the journal file of the search folder."""
    if settings.optuna_storage:
        try:
            return optuna.storages.RDBStorage(settings.optuna_storage)
        except Exception as e:  # noqa: BLE001 (SQLAlchemy raises many types for bad URLs and unreachable servers)
            raise SearchError(f"--optuna-storage {settings.optuna_storage}: cannot be used "
                              f"({str(e).splitlines()[0]})") from None
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(journal_path(store)))


def journal_pusher(settings: SearchSettings, store: Store) -> Callable[[], None] | None:
    """What keeps the search folder's journal up to date on object storage (None when there is nothing to do)."""
    if store.local or settings.optuna_storage:
        return None
    journal = replica(store)

    def push() -> None:
        try:
            journal.push()
        except OSError as e:  # the storage is unreachable for now: the next snapshot pushes the same lines
            logger.warning("cannot push the Optuna journal to %s: %s", store.uri, e)
    return push


class JournalMirror(Callback):
    """Kept so that searches started before the journal was pushed in pieces can be resumed (Tune restores
    their callbacks from its saved state); it does nothing now, the searcher pushes the journal."""

    def __init__(self, store: Store):
        self.store = store


@dataclass
class SearchData:
    """The four splits, loaded once by the driver (validation and test use their training item maps) and
    handed over to Ray's object store, after which the driver holds none of them."""

    train: SessionData | None
    valid: SessionData | None
    train_full: SessionData | None
    test: SessionData | None

    @classmethod
    def load(cls, settings: SearchSettings) -> "SearchData":
        """Load the splits, each with a one-line DataError if it cannot be used."""
        keys = {"allow_pickle": settings.allow_pickle}
        train = load_session_data(settings.train, **keys)
        train_full = load_session_data(settings.train_full, **keys)
        data = cls(train=train, valid=load_session_data(settings.valid, train.item_ids, **keys),
                   train_full=train_full, test=load_session_data(settings.test, train_full.item_ids, **keys))
        data.valid.check_schedule(512, "validate on")
        data.test.check_schedule(512, "test on")
        return data

    def put(self) -> dict[str, ray.ObjectRef]:
        """Move the splits into Ray's object store, once per search: trials, retrains and the baselines fetch
        them from there, and the driver's own copies are dropped (its memory stays that of the search state)."""
        names = ("train", "valid", "train_full", "test")
        refs = {name: ray.put(getattr(self, name)) for name in names}
        for name in names:
            setattr(self, name, None)
        free_memory("cpu")
        return refs


def largest_config(plan: StudyPlan) -> Config:
    """The study space's largest model: every searched range at its top, with momentum (one more state table)."""
    largest = {}
    for name, dist in plan.space.items():
        if hasattr(dist, "high"):
            largest[name] = dist.high
        elif name == "layers":
            largest[name] = max(dist.choices)
    return Config.from_dict({**plan.fixed, **largest, "momentum": 0.5})


def checkpoint_bound(settings: SearchSettings, plan: StudyPlan, n_items: int, resources: Resources) -> int:
    """Bytes the checkpoints may take: two per running trial plus one, at the study space's largest model."""
    return (KEEP_CHECKPOINTS * resources.max_concurrent + 1) * training_state_bytes(largest_config(plan), n_items)


def tpe_sampler(seed: int, concurrency: int) -> optuna.samplers.TPESampler:
    """TPE for trials in flight: constant liar (running trials count as bad, so concurrent trials spread),
    multivariate (parameters modelled jointly), and as many random start-up trials as run at once (at
    least 10), so that the first wave is not proposed from a handful of results.

    Every setting is explicit, so the behaviour does not depend on the installed Optuna's defaults.
    """
    with warnings.catch_warnings():  # multivariate and constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(10, concurrency), multivariate=True,
                                          constant_liar=True, group=False)


def make_searcher(settings: SearchSettings, plan: StudyPlan, index: int, storage: optuna.storages.BaseStorage,
                  concurrency: int, warm: list[dict] | None = None) -> DurableOptunaSearch:
    """TPE (seeded per study) over the study's space on the search's durable storage; `warm` configs first."""
    return DurableOptunaSearch(plan.space, metric=METRIC, mode=MODE, sampler=tpe_sampler(settings.seed + index,
                                                                                          concurrency),
                               study_name=settings.optuna_study_name(plan), storage=storage,
                               points_to_evaluate=warm or None, n_epochs=settings.epochs, experiment=plan.name)


def study_concurrency(settings: SearchSettings, resources: Resources, n_studies: int) -> int:
    """Trials of one study in flight: its share of the slots when the studies share them."""
    if settings.policy == "sequential":
        return resources.max_concurrent
    return max(1, -(-resources.max_concurrent // n_studies))


def run_search(settings: SearchSettings, store: Store, plans: list[StudyPlan], data: dict[str, ray.ObjectRef],
               resources: Resources, verbose: int = 1, retry_failed: bool = False,
               warm: dict[str, list[dict]] | None = None) -> None:
    """Run (or continue, after a stop) the studies' trials in one Tune experiment until all have ended.

    `verbose` is Tune's: 0 silent, 1 progress tables and trial results, 2 more detail.
    """
    saved = frozenset(settings.saved_epochs())
    setups = {plan.name: TrialSetup(search=settings.name, study=plan.name, fixed=plan.fixed, checkpoint_epochs=saved,
                                    cuda_graphs=settings.cuda_graphs) for plan in plans}
    trainable = make_trainable(setups, {k: data[k] for k in ("train", "valid")}, resources.trial_bundle)
    path = settings.experiment_uri
    for key, value in {**TUNE_ENVIRONMENT,
                       "TUNE_GLOBAL_CHECKPOINT_S": str(snapshot_period(settings.trials * len(plans)))}.items():
        os.environ.setdefault(key, value)
    storage = optuna_storage(settings, store)
    restoring = Tuner.can_restore(path)
    concurrency = study_concurrency(settings, resources, len(plans))
    searchers = {plan.name: make_searcher(settings, plan, index, storage, concurrency,
                                          None if restoring else (warm or {}).get(plan.name))
                 for index, plan in enumerate(plans)}
    push_journal = journal_pusher(settings, store)
    mux = StudyMux(searchers, {plan.name: settings.trials for plan in plans}, settings.policy, METRIC, MODE,
                   persist=push_journal)
    quiet_result_grid()
    if restoring:
        tuner = restored_tuner(plans, path, trainable, mux, retry_failed)
    else:
        scheduler = StudyASHA(settings.early_stopping, time_attr=EPOCH, metric=METRIC, mode=MODE,
                              max_t=settings.epochs, grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
        callbacks = [CheckpointJanitor(KEEP_CHECKPOINTS)]
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=mux, scheduler=scheduler, num_samples=-1,
                                   max_concurrent_trials=resources.max_concurrent, reuse_actors=True,
                                   trial_dirname_creator=trial_dirname),
            run_config=RunConfig(name=EXPERIMENT, storage_path=settings.search_uri,
                                 checkpoint_config=CheckpointConfig(num_to_keep=None),  # the janitor keeps them
                                 failure_config=FailureConfig(max_failures=settings.max_failures),
                                 callbacks=callbacks, verbose=verbose))
    try:
        tuner.fit()
    finally:
        if push_journal:
            push_journal()
    for progress in study_progress(settings, plans).values():
        plan = progress.plan
        if not progress.finished(settings.trials):
            raise SearchError(f"study {plan.name} stopped with {progress.ended} of {settings.trials} trials ended; "
                              f"continue with: gru4rec-search resume {settings.name}")


def check_restorable(fs: pyarrow.fs.FileSystem, experiment: str, mux: StudyMux) -> list[dict]:
    """Restore the searchers' state as Tune will, before Tune does: Tune answers a failed restore by starting the
    experiment again, empty, over the saved one. Files of such a restart from an earlier resume are set aside.
    Returns the trials of Tune's saved state (`read_state`)."""
    for session in set_aside_restarts(fs, experiment):
        print(f"set aside the experiment Tune restarted empty at {session} after a failed restore "
              f"({experiment}/{SET_ASIDE}/); resuming from the state before it", flush=True)
    trials = read_state(fs, experiment)
    if not trials:
        raise SearchError(f"{experiment}: Tune's saved experiment state holds no trials; nothing to resume")
    mux.tune_trials = {t["trial_id"] for t in trials}
    state = newest_searcher_state(fs, experiment)
    if state is None:
        print("the searcher's saved state is missing or truncated (the driver was killed while Tune saved it); "
              "rebuilding it from the Optuna studies and Tune's saved trials", flush=True)
    try:
        mux.restore_state(state if state is not None else searcher_state_from_studies(mux, trials))
    except Exception as e:  # noqa: BLE001 (any failure here would make Tune discard the experiment)
        reason = str(e) if isinstance(e, SearchError) else f"{type(e).__name__}: {e}"
        raise SearchError(f"cannot resume from {experiment}: {reason}; nothing was changed, the search can be "
                          "resumed once that is mended") from None
    return trials


def restored_tuner(plans: list[StudyPlan], path: str, trainable, mux: StudyMux, retry_failed: bool) -> Tuner:
    """The search's Tuner after a stop, reconciled with the Optuna studies first.

    Trials the Optuna studies have as ended are marked ended in Tune's saved state (its snapshot can be
    a moment older), so none is run again; those Tune's state lacks (started after its snapshot) are kept for the
    ledger and the scheduler (`write_kept`, `adopt_kept`); failed trials stay failed unless `retry_failed`; a raised
    budget reopens the search for new trials.
    """
    ended = {}
    for plan in plans:
        outcomes = optuna_outcomes(mux.searchers[plan.name]._ot_study, plan.name)
        ended.update({tid: "ERROR" if state == optuna.trial.TrialState.FAIL else "TERMINATED"
                      for tid, state in outcomes.items() if state in FINISHED})
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    trials = check_restorable(fs, root, mux)  # Tune's state, read once: at 1,200 trials it is 33 MB of JSON
    kept = write_kept(fs, root, mux.searchers)
    if kept:
        print(f"kept {kept} trial{'s' * (kept != 1)} that ended after Tune's last snapshot before the stop",
              flush=True)
    drop_older_sessions(fs, root)
    amended = set(end_finished_trials(fs, root, ended, os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")))
    if amended:
        logger.info("trials %s had ended after Tune's last snapshot", sorted(amended))
    trials = [{**t, "status": ended[t["trial_id"]]} if t["trial_id"] in amended else t for t in trials]
    delete_stale_checkpoints(fs, root, trials)
    resumed = [t for t in trials if t["status"] in UNFINISHED]
    for gone in stand_in_checkpoints(fs, resumed):
        print(f"the checkpoint {gone} that Tune's last snapshot names was deleted since; its trial resumes from the "
              "newest in its folder", flush=True)
    reopen_search(fs, root, {t["trial_id"] for t in resumed})
    tuner = Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=retry_failed)
    adopt_kept(tuner, mux)
    if retry_failed:
        failed = {t["trial_id"] for t in trials if t["status"] == "ERROR"}
        for searcher in mux.searchers.values():
            searcher.retry_after_restore = sorted(failed)
    replace_searcher(tuner, mux)
    return tuner
