"""Studies: one Ray Tune experiment (one Optuna study) per loss x embedding mode, durable and resumable.

Layout under the storage root (a local path, NFS, or a URI such as s3://bucket/prefix):
    NAME/search.json         the settings, written before any trial starts (resume reads them)
    NAME/<study>/            the Tune experiment: trials, their checkpoints, TensorBoard logs, searcher state
    NAME/<study>_best.py ... the exports of `finalize`
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from gru4rec import SessionData, load_session_data

from .spaces import StudyPlan, parse_space, plan_study
from .trainable import METRIC, MODE, TrialSetup, make_trainable

logger = logging.getLogger(__name__)

SETTINGS_FILE = "search.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_STORAGE = "~/gru4rec-search"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
# Tune snapshots the experiment state every >= 10 s by default; a trial that finished after the last snapshot
# is replayed from its last checkpoint after a driver crash. Trials take minutes, so a 1 s period costs little
# (and Tune's warning about snapshots less than 5 s apart is then expected, so it is turned off).
TUNE_ENVIRONMENT = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


class SearchError(RuntimeError):
    """The search cannot start or go on; the message is one line for the user."""


def resolve_storage(storage: str) -> str:
    """A URI unchanged, or a local path made absolute (Ray needs absolute local storage paths)."""
    if "://" in storage:
        return storage.rstrip("/")
    return os.path.abspath(os.path.expanduser(storage))


@dataclass
class SearchSettings:
    """Everything a search needs; saved as NAME/search.json so that `resume`, `status` and `export` agree."""

    name: str
    train: str
    valid: str
    train_full: str
    test: str
    losses: list[str]
    modes: list[str]
    spaces: dict[str, dict[str, str]]  # loss -> {"source": file, "text": JSON Lines}
    fixed: dict[str, str] = field(default_factory=dict)
    trials: int = 200
    epochs: int = 10
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 0.25 when the Ray cluster has GPUs, else 0
    max_concurrent: int | None = None  # None: as many trials as the cluster's resources fit
    grace_period: int = 1
    reduction_factor: float = 3.0
    max_failures: int = 2
    optuna_storage: str | None = None
    optuna_study: str | None = None  # prefix of the Optuna study names; default: the search name

    def validate(self) -> None:
        """Raise SearchError for any setting that cannot work (before data, storage or Ray are touched)."""
        if not NAME_PATTERN.match(self.name):
            raise SearchError(f"--name {self.name!r}: use letters, digits, '_', '.' and '-' only")
        checks = [("--trials", self.trials >= 1, "an integer >= 1"), ("--epochs", self.epochs >= 1, "an integer >= 1"),
                  ("--cpus-per-trial", self.cpus_per_trial > 0, "a number > 0"),
                  ("--gpus-per-trial", self.gpus_per_trial is None or self.gpus_per_trial >= 0, "a number >= 0"),
                  ("--max-concurrent", self.max_concurrent is None or self.max_concurrent >= 1, "an integer >= 1"),
                  ("--grace-period", 1 <= self.grace_period <= self.epochs,
                   f"an integer in 1..{self.epochs} (--epochs)"),
                  ("--reduction-factor", self.reduction_factor > 1, "a number > 1"),
                  ("--max-failures", self.max_failures >= 0, "an integer >= 0")]
        for option, ok, allowed in checks:
            if not ok:
                raise SearchError(f"{option} must be {allowed}")
        self.plans()

    def plans(self) -> list[StudyPlan]:
        """The studies of this search, loss by loss and mode by mode."""
        plans = []
        for loss in self.losses:
            space = parse_space(self.spaces[loss]["text"], self.spaces[loss]["source"])
            for mode in self.modes:
                plans.append(plan_study(loss, mode, self.epochs, space, self.fixed))
        return plans

    @property
    def search_uri(self) -> str:
        """Where this search's files live: STORAGE/NAME."""
        return f"{resolve_storage(self.storage)}/{self.name}"

    def experiment_uri(self, plan: StudyPlan) -> str:
        """Where the study's Tune experiment lives: STORAGE/NAME/<study>."""
        return f"{self.search_uri}/{plan.name}"

    def optuna_study_name(self, plan: StudyPlan) -> str:
        """The Optuna study name (prefix/<study>), shared by runs that extend a study."""
        return f"{self.optuna_study or self.name}/{plan.name}"

    def to_json(self) -> str:
        """The settings as the text of search.json."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "SearchSettings":
        """Settings from the text of search.json, with a one-line error if it is not one."""
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise SearchError(f"{source}: not a search settings file ({e})") from None


class Store:
    """Small files of one search under its storage root, through pyarrow.fs (local, NFS, S3, GCS)."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        except (pyarrow.ArrowInvalid, OSError) as e:
            raise SearchError(f"storage {uri}: cannot be used ({e})") from None

    def _path(self, name: str) -> str:
        """The filesystem path of a file of this search."""
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        """Whether a file of this search exists."""
        return self.fs.get_file_info(self._path(name)).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str | None:
        """The file's text, or None when it does not exist."""
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self._path(name)) as f:
            return f.readall().decode()

    def write(self, name: str, data: bytes | str) -> None:
        """Write through a temporary name and rename, so readers never see a half-written file."""
        path = self._path(name)
        self.fs.create_dir(os.path.dirname(path), recursive=True)
        tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data.encode() if isinstance(data, str) else data)
        self.fs.move(tmp, path)

    def check_writable(self) -> None:
        """Create the root and write and delete a probe file; a one-line SearchError if that fails."""
        probe = ".write-probe"
        try:
            self.fs.create_dir(self.root, recursive=True)
            self.write(probe, b"")
            self.fs.delete_file(self._path(probe))
        except OSError as e:
            reason = e.strerror or str(e).splitlines()[0]
            raise SearchError(f"storage {self.uri}: not writable ({reason})") from None


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped before their last epoch as PRUNED, not COMPLETE.

    Ray's OptunaSearch tells Optuna COMPLETE with whatever the last (early-epoch) value was, so TPE would
    treat a 1-epoch MRR as a final one. PRUNED with the last value is what TPE is built for. Tune passes the
    result on which a trial stops (by ASHA or after its last epoch) only to `on_trial_complete`, never to
    `on_trial_result`, so that last value is added to the intermediate values here first.
    """

    def __init__(self, *args: Any, n_epochs: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._n_epochs = n_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)  # the base class warns and ignores it
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self._metric)
        if not error and value is not None and TRAINING_ITERATION in result:
            with warnings.catch_warnings():  # Optuna warns when the step was already reported; keep the first
                warnings.simplefilter("ignore")
                ot_trial.report(value, result[TRAINING_ITERATION])
        if not error and value is not None and result.get("epoch", 0) >= self._n_epochs:
            super().on_trial_complete(trial_id, result, error)
            return
        try:
            # PRUNED stores the last intermediate value as the trial's value; FAIL stores none.
            self._ot_study.tell(ot_trial, state=TrialState.FAIL if error else TrialState.PRUNED)
        except Exception as e:  # noqa: BLE001 (like the base class: Optuna refuses e.g. NaN values; log it)
            logger.warning("cannot tell Optuna the end of trial %s: %s", trial_id, e)
        self._completed_trials.add(trial_id)


class ResumableASHA(ASHAScheduler):
    """ASHA that refills its rungs from the restored trials' result histories when an experiment is resumed.

    Tune restores the searcher's state but not the scheduler's: without this, ASHA would restart with empty rungs
    after `resume` and let poor trials run to their last epoch until the rungs fill again.
    """

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.has_reported_at_least_once:  # only restored trials have results when they are added
            storage = trial.storage
            for result in result_history(storage.storage_filesystem, f"{storage.trial_fs_path}/result.json"):
                self.on_trial_result(tune_controller, trial, result)


def result_history(fs: pyarrow.fs.FileSystem, path: str) -> list[dict[str, Any]]:
    """Every result a trial reported, from its result.json (empty if there is none yet)."""
    try:
        with fs.open_input_stream(path) as f:
            text = f.read().decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def optuna_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """An Optuna RDB storage (sqlite:///file.db, postgresql://...) for the studies, or None (in memory)."""
    if not url:
        return None
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # noqa: BLE001 (SQLAlchemy raises many types for bad URLs and unreachable servers)
        raise SearchError(f"--optuna-storage {url}: cannot be used ({str(e).splitlines()[0]})") from None


def make_searcher(settings: SearchSettings, plan: StudyPlan, index: int) -> PrunedAwareOptunaSearch:
    """TPE (seeded per study) over the study's space, in memory or in the Optuna RDB."""
    sampler = optuna.samplers.TPESampler(seed=settings.seed + index)
    return PrunedAwareOptunaSearch(plan.space, metric=METRIC, mode=MODE, sampler=sampler,
                                   study_name=settings.optuna_study_name(plan),
                                   storage=optuna_storage(settings.optuna_storage), n_epochs=settings.epochs)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (the default repeats every parameter)."""
    return f"trial_{trial.trial_id}"


@dataclass
class SearchData:
    """The four splits, loaded once by the driver (validation and test use their training item maps)."""

    train: SessionData
    valid: SessionData
    train_full: SessionData
    test: SessionData

    @classmethod
    def load(cls, settings: SearchSettings) -> "SearchData":
        """Load the splits, each with a one-line DataError if it cannot be used."""
        train = load_session_data(settings.train)
        train_full = load_session_data(settings.train_full)
        return cls(train=train, valid=load_session_data(settings.valid, train.item_ids),
                   train_full=train_full, test=load_session_data(settings.test, train_full.item_ids))


@dataclass
class Resources:
    """What one trial (and one retrain) takes, and how many trials run at once."""

    cpus: float
    gpus: float
    max_concurrent: int

    def bundle(self) -> dict[str, float]:
        """The per-trial resource request in Tune's form."""
        return {"cpu": self.cpus, "gpu": self.gpus} if self.gpus else {"cpu": self.cpus}


def connect_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = True,
                quiet: bool = False) -> str | None:
    """Join a cluster (--address or RAY_ADDRESS, e.g. inside `ray job submit`) or start a local Ray.

    Returns the dashboard URL when there is one. `quiet` keeps the workers' log lines out of the driver's output
    (they stay in Ray's log files and the dashboard).
    """
    if ray.is_initialized():
        return None
    try:
        if address or os.environ.get("RAY_ADDRESS"):
            context = ray.init(address=address, log_to_driver=not quiet)
        else:
            context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=not quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SearchError(f"cannot start or join Ray at {address or 'a local instance'}: "
                          f"{str(e).splitlines()[0]}") from None
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url else None


def plan_resources(settings: SearchSettings, cluster: dict[str, float], remote: bool) -> Resources:
    """Resolve per-trial CPUs/GPUs and the concurrency from the settings and the cluster's resources."""
    n_gpus, n_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if n_gpus > 0 else 0.0
    if gpus > 0 and n_gpus == 0 and not remote:
        raise SearchError(f"--gpus-per-trial {gpus}: this Ray instance has no GPU; use --gpus-per-trial 0")
    if settings.cpus_per_trial > n_cpus and not remote:
        raise SearchError(f"--cpus-per-trial {settings.cpus_per_trial}: this Ray instance has {n_cpus:g} CPUs")
    concurrent = settings.max_concurrent
    if remote and (settings.gpus_per_trial is None or concurrent is None):
        print(f"note: trial resources are sized from the cluster as it is now ({n_cpus:g} CPUs, {n_gpus:g} GPUs); "
              "on an autoscaling cluster pass --gpus-per-trial and --max-concurrent", file=sys.stderr)
    if concurrent is None:
        fits = [n_cpus / settings.cpus_per_trial] + ([n_gpus / gpus] if gpus and n_gpus else [])
        concurrent = max(1, math.floor(min(fits)))
    return Resources(cpus=settings.cpus_per_trial, gpus=gpus, max_concurrent=concurrent)


@dataclass
class StudyProgress:
    """Where a study stands: trial counts by state and the best trial so far."""

    plan: StudyPlan
    started: bool = False
    trials: int = 0
    unfinished: int = 0
    stopped_early: int = 0
    failed: int = 0
    best_mrr: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)

    def finished(self, asked: int) -> bool:
        """Whether every asked trial exists and none is still pending or running."""
        return self.started and self.trials >= asked and self.unfinished == 0


def read_experiment(settings: SearchSettings, plan: StudyPlan) -> tune.ExperimentAnalysis | None:
    """The study's Tune experiment as last saved, or None if it has not started."""
    path = settings.experiment_uri(plan)
    if not Tuner.can_restore(path):
        return None
    # While trials run, some have results the snapshot knows of but no result file yet; Tune warns about each.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    attempts = 3
    while True:
        try:
            return tune.ExperimentAnalysis(path, default_metric=METRIC, default_mode=MODE)
        except (ValueError, OSError):  # a snapshot being copied into place by a running search
            attempts -= 1
            if not attempts:
                raise
            time.sleep(1.0)


def study_progress(settings: SearchSettings, plan: StudyPlan) -> StudyProgress:
    """Count the study's trials by state and find the best last MRR@20 so far."""
    progress = StudyProgress(plan)
    analysis = read_experiment(settings, plan)
    if analysis is None:
        return progress
    progress.started = True
    for trial in analysis.trials:
        progress.trials += 1
        result = trial.last_result or {}
        if trial.status in UNFINISHED:
            progress.unfinished += 1
        elif trial.status == "ERROR":
            progress.failed += 1
        elif result.get("epoch", 0) < settings.epochs:
            progress.stopped_early += 1
        value = result.get(METRIC)
        if value is not None and (progress.best_mrr is None or value > progress.best_mrr):
            progress.best_mrr = value
            progress.best_params = {k: trial.config[k] for k in plan.space if k in trial.config}
    return progress


def run_study(settings: SearchSettings, plan: StudyPlan, index: int, data: SearchData, resources: Resources,
              verbose: int = 1) -> None:
    """Run (or continue, after a crash) the study's experiment until all its trials have finished.

    `verbose` is Tune's: 0 silent, 1 progress tables and trial results, 2 more detail.
    """
    setup = TrialSetup(search=settings.name, study=plan.name, fixed=plan.fixed)
    trainable = make_trainable(setup, data.train, data.valid, resources.bundle())
    path = settings.experiment_uri(plan)
    for key, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if Tuner.can_restore(path):
        tuner = Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = ResumableASHA(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=settings.epochs,
                                  grace_period=settings.grace_period, reduction_factor=settings.reduction_factor)
        tuner = Tuner(
            trainable,
            tune_config=TuneConfig(search_alg=make_searcher(settings, plan, index), scheduler=scheduler,
                                   num_samples=settings.trials, max_concurrent_trials=resources.max_concurrent,
                                   reuse_actors=True, trial_dirname_creator=trial_dirname),
            run_config=RunConfig(name=plan.name, storage_path=settings.search_uri,
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=settings.max_failures),
                                 callbacks=[TBXLoggerCallback()], verbose=verbose))
    tuner.fit()
    progress = study_progress(settings, plan)
    if not progress.finished(settings.trials):
        raise SearchError(f"study {plan.name} stopped with {progress.trials - progress.unfinished} of "
                          f"{settings.trials} trials finished; continue with: gru4rec-search resume {settings.name}")


def load_settings(name: str, storage: str) -> tuple[SearchSettings, Store]:
    """The settings of an existing search, with a one-line error if there is none."""
    store = Store(f"{resolve_storage(storage)}/{name}")
    text = store.read_text(SETTINGS_FILE)
    if text is None:
        raise SearchError(f"no search {name!r} in {resolve_storage(storage)} (no {SETTINGS_FILE}); "
                          "pass the --storage it was started with")
    settings = SearchSettings.from_json(text, f"{store.uri}/{SETTINGS_FILE}")
    settings.storage = storage if "://" in storage else resolve_storage(storage)
    return settings, store


def new_search_store(settings: SearchSettings) -> Store:
    """The store of a new search: refuses an existing search of that name and checks the storage is writable."""
    store = Store(settings.search_uri)
    if store.exists(SETTINGS_FILE):
        raise SearchError(f"search {settings.name!r} already exists in {resolve_storage(settings.storage)}; "
                          f"continue it with: gru4rec-search resume {settings.name}, or choose another --name")
    store.check_writable()
    return store


def data_paths_exist(settings: SearchSettings) -> None:
    """A one-line error for the first split file that does not exist."""
    for option, path in [("--train", settings.train), ("--valid", settings.valid),
                         ("--train-full", settings.train_full), ("--test", settings.test)]:
        if not Path(path).is_file():
            raise SearchError(f"{option} {path}: no such file")
