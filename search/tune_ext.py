"""What the platform adds to Ray Tune, and every use of Tune's and Ray's OptunaSearch's private parts.

- `StudyMux` and `StudyASHA`: the studies of a search in one Tune experiment, sharing its trial slots,
  each with its own Optuna study and its own ASHA rungs.
- `DurableOptunaSearch`: OptunaSearch on a durable Optuna study (journal file or RDB) that tells Optuna
  each trial's end once, with the state the ledger derives (complete, or pruned at the epoch it stopped),
  rebinds to the search folder it is resumed from, reconciles with Tune on resume, and never lets an
  Optuna exception escape a callback.
- `ResumableASHA`: ASHA whose rungs are refilled from the restored trials' histories on resume.
- `CheckpointJanitor`: deletes the checkpoints of trials that have ended (their metrics stay in result.json).
- Reading and amending Tune's experiment state file (trial ids, statuses, configs), and the record of trials
  a resume kept beside it (ended after Tune's last snapshot).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from types import SimpleNamespace
from typing import Any, Callable

import optuna
import pyarrow.fs
from optuna.trial import TrialState
from ray.tune import Callback
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from .calibration import RUNG_RULES, CalibratedRungs
from .ledger import METRICS_FILE, UNFINISHED, Outcome, classify, read_results, rung_epochs
from .settings import SearchError, write_atomically

logger = logging.getLogger(__name__)

STUDY_KEY = "study"  # the trial config's entry that names its study
EPOCH = "epoch"  # what a trial reports after each epoch, the schedulers' time (Tune's iteration count restarts
# from its snapshot's checkpoint when a trial resumes from a newer one)
TUNE_TRIAL_ATTR = "tune_trial_id"
EXPERIMENT_ATTR = "experiment"
LOST_ATTR = "lost"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class DurableOptunaSearch(OptunaSearch):
    """OptunaSearch that a crashed driver can resume without telling Optuna anything twice.

    Every Optuna trial carries the Tune trial id and experiment name as user attributes, so that on
    resume (`restore`) the study is matched with what Tune restored: trials Optuna already finished
    are never told again, trials Optuna has ended that Tune does not know (they ended after Tune's last
    snapshot) are kept, and those it has RUNNING that Tune does not know are marked FAIL; Tune asks new
    ones for the budget it still has.
    """

    def __init__(self, *args: Any, n_epochs: int, experiment: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._n_epochs = n_epochs
        self._experiment = experiment
        self.kept: dict[str, optuna.trial.FrozenTrial] = {}  # Tune trial id -> ended trial Tune does not know

    # -- Tune callbacks; none may raise --------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        try:
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            ot_trial.set_user_attr(EXPERIMENT_ATTR, self._experiment)
            return config
        except Exception as e:  # noqa: BLE001 (a storage error: Tune asks again later)
            logger.warning("Optuna could not suggest a config for trial %s: %s", trial_id, e)
            self._ot_trials.pop(trial_id, None)
            return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self._finished(trial_id):
            return
        try:
            with warnings.catch_warnings():  # Optuna warns when a step was already reported (a replay)
                warnings.simplefilter("ignore")
                # the step is the epoch (OptunaSearch takes Tune's iteration count, which restarts from the
                # snapshot's checkpoint when a trial resumes from a newer one)
                super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: result.get(EPOCH, result.get(
                    TRAINING_ITERATION))})
        except Exception as e:  # noqa: BLE001
            logger.warning("cannot report trial %s to Optuna: %s", trial_id, e)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._finished(trial_id):
            self._completed_trials.add(trial_id)
            return
        try:
            self._tell_end(trial_id, result, error)
        except Exception as e:  # noqa: BLE001
            logger.warning("cannot tell Optuna the end of trial %s: %s", trial_id, e)
        self._completed_trials.add(trial_id)

    def _tell_end(self, trial_id: str, result: dict | None, error: bool) -> None:
        """COMPLETE for a trial that ran every epoch, PRUNED (its last value) if stopped or diverged, FAIL on error.

        Tune passes the result a trial stops on only here, never to `on_trial_result`, so it is
        reported first.
        """
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self._metric)
        step = (result or {}).get(EPOCH, (result or {}).get(TRAINING_ITERATION))
        if not error and value is not None and step is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ot_trial.report(value, step)
        outcome = classify("ERROR" if error else "TERMINATED", [result] if result else [], self._n_epochs)
        if outcome == Outcome.COMPLETE:
            self._ot_study.tell(ot_trial, value, state=TrialState.COMPLETE)
        elif outcome == Outcome.FAILED or value is None:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        else:  # PRUNED stores the last intermediate value as the trial's value
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)

    def _finished(self, trial_id: str) -> bool:
        """Whether Optuna already holds the end of this trial (a replay after a driver crash)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return True
        try:
            return self._ot_study._storage.get_trial(ot_trial._trial_id).state in FINISHED
        except Exception:  # noqa: BLE001
            return False

    # -- resume -------------------------------------------------------------------------------------
    def restore(self, checkpoint_path: str) -> None:
        """Load Tune's saved searcher state, then bind it to this search's study and reconcile."""
        with open(checkpoint_path, "rb") as f:
            self.restore_state(pickle.load(f))

    def restore_state(self, state: dict[str, Any], tune_trials: set[str] | None = None) -> None:
        """Take a saved state (the pickled `__dict__`), bound to this searcher's storage, and reconcile.

        `tune_trials`: the trials of Tune's restored state. The searcher's state can be a snapshot newer than
        it (a driver killed while uploading the two); trials only the searcher knows are then set aside.
        """
        storage, study_name, sampler_now = self._ot_study._storage, self._study_name, self._sampler
        experiment, n_epochs = self._experiment, self._n_epochs
        retry = getattr(self, "retry_after_restore", [])
        self.__dict__.update(state)
        self._experiment, self._n_epochs, self.retry_after_restore = experiment, n_epochs, []
        if self._sampler is None:
            self._sampler = sampler_now
        if isinstance(storage, optuna.storages.InMemoryStorage):  # nothing durable to rebind to
            return
        # The pickled study points at the storage the search was started with (another folder, if it
        # was copied or renamed); the trials are the same, so rebind them to this search's storage.
        self._storage = storage
        self._ot_study = optuna.load_study(study_name=study_name, storage=storage, sampler=self._sampler)
        if tune_trials is not None:
            self._ot_trials = {tid: t for tid, t in self._ot_trials.items() if tid in tune_trials}
            self._completed_trials = {tid for tid in self._completed_trials if tid in tune_trials}
        trials, missing = {}, []
        for tid, trial in self._ot_trials.items():
            try:
                trials[tid] = optuna.trial.Trial(self._ot_study, trial._trial_id)
            except KeyError:
                missing.append(tid)
        if missing:  # the searcher's state is pushed after the storage it refers to, so this is damage
            raise SearchError(f"Optuna study {study_name} lacks trials {', '.join(sorted(missing)[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(trials) + len(missing)}) "
                              "that Tune's saved state has: the Optuna storage is older than Tune's state")
        self._ot_trials = trials
        self.reconcile()
        self.retry(sorted(set(retry)))

    def reconcile(self) -> list[int]:
        """Match this experiment's Optuna trials with Tune's restored state; returns the numbers of those set aside.

        Trials Tune does not know were asked after its last snapshot (or were being asked) when the driver
        stopped. Ended ones are kept (`kept`): their end is in the study and their metrics in their folders, so
        they count towards the budget and the ledger (`write_kept`). Running ones are set aside: marked FAIL and
        `lost`, and run again as new trials.
        """
        known = {t._trial_id for t in self._ot_trials.values()}
        storage, study_id = self._ot_study._storage, self._ot_study._study_id
        ended_lost = set(self._ot_study.user_attrs.get(LOST_ATTR, []))
        lost, self.kept = [], {}
        for trial in self._ot_study.get_trials(deepcopy=False):
            # A trial without attributes was being asked when the driver stopped (asking is not atomic).
            if (trial._trial_id in known or trial.user_attrs.get(LOST_ATTR) or trial.number in ended_lost
                    or trial.user_attrs.get(EXPERIMENT_ATTR, self._experiment) != self._experiment):
                continue
            if trial.state == TrialState.WAITING:  # enqueued, not asked yet: it will be
                continue
            if trial.state in FINISHED and TUNE_TRIAL_ATTR in trial.user_attrs:
                self.kept[trial.user_attrs[TUNE_TRIAL_ATTR]] = trial
                continue
            if trial.state == TrialState.RUNNING:
                storage.set_trial_user_attr(trial._trial_id, LOST_ATTR, "asked after the driver's last snapshot")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            else:  # an ended trial cannot be changed: the study lists it
                ended_lost.add(trial.number)
                storage.set_study_user_attr(study_id, LOST_ATTR, sorted(ended_lost))
            lost.append(trial.number)
        if lost:
            logger.warning("trials %s were running, asked after the driver's last snapshot; set aside (marked FAIL) "
                           "and asked again", lost)
        return lost

    def retry(self, trial_ids: list[str]) -> None:
        """Give failed Tune trials that are restarted fresh Optuna trials with the same parameters."""
        for trial_id in trial_ids:
            old = self._ot_trials.get(trial_id)
            if old is None:
                continue
            self._ot_study.enqueue_trial(old.params, skip_if_exists=False)
            new = self._ot_study.ask(fixed_distributions=self._space)
            new.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            new.set_user_attr(EXPERIMENT_ATTR, self._experiment)
            self._ot_trials[trial_id] = new
            self._completed_trials.discard(trial_id)


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials but those set aside on a resume (see DurableOptunaSearch.reconcile)."""
    ended_lost = set(study.user_attrs.get(LOST_ATTR, []))
    return [t for t in study.get_trials(deepcopy=False)
            if not t.user_attrs.get(LOST_ATTR) and t.number not in ended_lost]


def optuna_outcomes(study: optuna.Study, experiment: str) -> dict[str, TrialState]:
    """Tune trial id -> state of its Optuna trial, for one experiment of the study."""
    return {t.user_attrs[TUNE_TRIAL_ATTR]: t.state for t in counted_trials(study)
            if t.user_attrs.get(EXPERIMENT_ATTR) == experiment and TUNE_TRIAL_ATTR in t.user_attrs}


class StudyMux(Searcher):
    """The studies of a search behind one Tune search, so that they share the cluster's trial slots.

    Each new trial goes to a study with budget left: with `policy` "shared" the one with the fewest
    running trials (the slots are split evenly, and a study that has started all its trials leaves its
    slots to the others), with "sequential" the first one (studies run one after another, but the next
    one starts as soon as the previous one has no trial left to start, so no slot waits for its tail).
    Results and ends go to the trial's study. Budgets and policy come from the settings, not from the
    saved state, so that a resume may raise the budget. `persist` makes what the studies recorded durable:
    it runs before each save, which Tune makes at every snapshot of the experiment before it uploads it (what it
    writes is in the storage before the snapshot that refers to it), and after each trial's end, which Tune tells
    the searcher before its callbacks (`CheckpointJanitor` deletes the ended trial's checkpoints only once its
    end is stored).
    """

    def __init__(self, searchers: dict[str, DurableOptunaSearch], budgets: dict[str, int], policy: str,
                 metric: str, mode: str, persist: Callable[[], None] | None = None):
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.budgets, self.policy = searchers, budgets, policy
        self.persist = persist
        self.tune_trials: set[str] | None = None  # on resume, the trials of Tune's restored state
        self.study_of: dict[str, str] = {}
        self.running: dict[str, set[str]] = {name: set() for name in searchers}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # every study has its space, metric and mode already

    def started(self, study: str) -> int:
        """Trials of the study: those Tune knows of (asked and not lost), and those a resume kept."""
        return len(self.searchers[study]._ot_trials) + len(self.searchers[study].kept)

    def suggest(self, trial_id: str) -> dict | str | None:
        open_ = [name for name in self.searchers if self.started(name) < self.budgets[name]]
        if not open_:
            return Searcher.FINISHED
        if self.policy == "sequential":
            study = open_[0]
        else:
            study = min(open_, key=lambda name: (len(self.running[name]), self.started(name)))
        config = self.searchers[study].suggest(trial_id)
        if config is None:
            return None
        self.study_of[trial_id] = study
        self.running[study].add(trial_id)
        return {**config, STUDY_KEY: study}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.study_of:
            self.searchers[self.study_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        study = self.study_of.get(trial_id)
        if study is not None:
            self.searchers[study].on_trial_complete(trial_id, result, error)
            self.running[study].discard(trial_id)
            if self.persist is not None:
                self.persist()

    def save(self, checkpoint_path: str) -> None:
        """Tune's save at each snapshot, into its local copy of the experiment folder, which it then uploads whole:
        the state files of the session a resume started from (O(trials)) are dropped from that copy, or every
        snapshot would upload them again."""
        if self.persist is not None:
            self.persist()
        drop_older_sessions(pyarrow.fs.LocalFileSystem(), os.path.dirname(os.path.abspath(checkpoint_path)))
        state = {"study_of": self.study_of, "running": self.running,  # `kept` is rebuilt from the study on restore
                 "searchers": {name: {k: v for k, v in s.__dict__.items() if k != "kept"}
                               for name, s in self.searchers.items()}}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore, from its copy of the searcher's state: done already when the resume restored the state
        before Tune (`tune_trials` set, see study.check_restorable)."""
        if self.tune_trials is not None:
            return
        with open(checkpoint_path, "rb") as f:
            self.restore_state(pickle.load(f))

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take the state `save` wrote: each study's searcher state, and which trial belongs to which study
        (only trials of Tune's restored state, `tune_trials`, when the resume has set it)."""
        known = self.tune_trials
        for name, searcher in self.searchers.items():
            if name in state["searchers"]:
                searcher.restore_state(state["searchers"][name], known)
        self.study_of = {tid: name for tid, name in state["study_of"].items()
                         if name in self.searchers and (known is None or tid in known)}
        self.running = {name: {tid for tid in state["running"].get(name, set())
                               if not self.searchers[name]._finished(tid)} for name in self.searchers}

    def retry(self, trial_ids: list[str]) -> None:
        """Fresh Optuna trials for failed Tune trials that are restarted (see DurableOptunaSearch.retry)."""
        for trial_id in trial_ids:
            study = self.study_of.get(trial_id)
            if study is not None:
                self.searchers[study].retry([trial_id])
                self.running[study].add(trial_id)


class StudyASHA(FIFOScheduler):
    """One early stopping per study: a trial is compared only with trials of its own study (their MRR scales
    differ). `early_stopping` "asha" is Tune's ASHA; "calibrated" cuts at the same rungs as hard as each rung's
    measured ranking allows, "predicted" stops a trial whose final value, predicted from its rung value, is
    unlikely to beat the study's best (search/calibration.py)."""

    def __init__(self, early_stopping: str = "asha", **asha: Any):
        super().__init__()
        self._asha_options = asha
        self._early_stopping = early_stopping
        self._per_study: dict[str, ResumableASHA | CalibratedStudy] = {}

    def _asha(self, trial: Any) -> "ResumableASHA | CalibratedStudy":
        study = trial.config.get(STUDY_KEY, "")
        if study not in self._per_study:
            kind = getattr(self, "_early_stopping", "asha")
            self._per_study[study] = ResumableASHA(**self._asha_options) if kind == "asha" else \
                CalibratedStudy(RUNG_RULES[kind], **self._asha_options)
        return self._per_study[study]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def adopt(self, study: str, trial_id: str, history: dict[int, float]) -> None:
        """Take in the values (epoch -> metric) of an ended trial Tune does not know, as a restored trial's are: one
        kept on resume (it ended after Tune's last snapshot, see DurableOptunaSearch.reconcile)."""
        stand_in = SimpleNamespace(trial_id=trial_id, config={STUDY_KEY: study})
        metric = self._asha_options["metric"]
        self._asha(stand_in).adopt(stand_in, [{EPOCH: epoch, TRAINING_ITERATION: epoch, metric: value}
                                              for epoch, value in sorted(history.items())])


class ResumableASHA(ASHAScheduler):
    """ASHA that refills its rungs from the restored trials' result histories when an experiment is resumed.

    Tune restores the searcher's state but not the scheduler's: without this, ASHA would restart with empty rungs
    after `resume` and let poor trials run to their last epoch until the rungs fill again.
    """

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        for result in restored_results(trial):
            self.on_trial_result(tune_controller, trial, result)

    def adopt(self, trial: Any, results: list[dict[str, Any]]) -> None:
        """Record an ended trial's results in the rungs (see StudyASHA.adopt)."""
        super().on_trial_add(None, trial)
        for result in results:
            self.on_trial_result(None, trial, result)
        self.on_trial_remove(None, trial)


def restored_results(trial: Any) -> list[dict[str, Any]]:
    """The results a trial reported before a resume (from its metrics file); none for a new trial (only restored
    trials have results when Tune adds them)."""
    if not trial.has_reported_at_least_once:
        return []
    storage = trial.storage
    return read_results(storage.storage_filesystem, f"{storage.trial_fs_path}/{METRICS_FILE}")


class CalibratedStudy(FIFOScheduler):
    """One study's self-calibrating early stopping (`rule`: CalibratedRungs or PredictedRungs) as a Tune
    scheduler; its state is refilled from the restored trials' results on resume, like ResumableASHA's rungs."""

    def __init__(self, rule: type[CalibratedRungs], time_attr: str, metric: str, mode: str, max_t: int,
                 grace_period: int, reduction_factor: float):
        super().__init__()
        if time_attr not in (EPOCH, TRAINING_ITERATION) or mode != "max":
            raise ValueError("calibrated early stopping counts epochs of a metric to maximise")
        self._metric, self._time_attr = metric, time_attr
        self.rungs = rule(max_t, rung_epochs(max_t, grace_period, reduction_factor), reduction_factor)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        for result in restored_results(trial):
            self.rungs.record(trial.trial_id, result[getattr(self, "_time_attr", TRAINING_ITERATION)],
                              result[self._metric])

    def adopt(self, trial: Any, results: list[dict[str, Any]]) -> None:
        """Record an ended trial's results (see StudyASHA.adopt)."""
        for result in results:
            self.rungs.record(trial.trial_id, result[getattr(self, "_time_attr", TRAINING_ITERATION)],
                              result[self._metric])

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        value = result.get(self._metric)
        epoch = result.get(getattr(self, "_time_attr", TRAINING_ITERATION))
        if value is None or epoch is None:
            return self.CONTINUE
        go_on = self.rungs.decide(trial.trial_id, epoch, float(value))
        return self.CONTINUE if go_on else self.STOP


class CheckpointJanitor(Callback):
    """Keeps a running trial's newest `keep` checkpoints and deletes a trial's checkpoints once it has ended: a
    study keeps checkpoints of running trials only.

    Tune's own `CheckpointConfig(num_to_keep)` would do the first, but it also forces a snapshot of the whole
    experiment whenever a trial has saved that many checkpoints since the last one, every few seconds in a
    large search. A resumed trial starts from the newest checkpoint in its folder (`resume_candidates`), so
    Tune's snapshot may name one deleted since.

    Tune tells the searcher (and so the durable Optuna study) before it calls callbacks, so a trial
    whose checkpoints are gone is already recorded as ended; on resume `end_finished_trials` marks it
    ended in Tune's state too, and it is never resumed from a checkpoint that no longer exists. A driver
    killed between the two leaves checkpoints behind; `delete_stale_checkpoints` sweeps them on resume.
    """

    def __init__(self, keep: int = 2):
        self.keep = keep

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        delete_checkpoint_dirs(trial.storage.storage_filesystem, trial.storage.trial_fs_path, trial.trial_id,
                               keep=getattr(self, "keep", 2))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        delete_checkpoints(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        delete_checkpoints(trial)


def delete_checkpoints(trial: Any) -> None:
    delete_checkpoint_dirs(trial.storage.storage_filesystem, trial.storage.trial_fs_path, trial.trial_id)


def delete_checkpoint_dirs(fs: pyarrow.fs.FileSystem, trial_path: str, trial_id: str, keep: int = 0) -> None:
    """Delete the checkpoint_* folders of one trial folder but the newest `keep`; a failure is logged, not raised
    (disk is not state)."""
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
        saved = sorted(e.path for e in entries
                       if e.type == pyarrow.fs.FileType.Directory and e.base_name.startswith("checkpoint_"))
        for path in saved[:len(saved) - keep]:
            fs.delete_dir(path)
    except OSError as e:
        logger.warning("cannot delete the checkpoints of trial %s: %s", trial_id, e)


def delete_stale_checkpoints(fs: pyarrow.fs.FileSystem, experiment: str, trials: list[dict[str, Any]]) -> None:
    """Before a resume: delete the checkpoints no restored trial can use; `trials` as `read_state` gives them,
    with the statuses `end_finished_trials` set.

    Those are of trials Tune's saved state has as ended (a driver killed after a trial's end reached the
    Optuna study but before `CheckpointJanitor` ran; once `end_finished_trials` has marked it ended, no
    callback would), and of trial folders the state does not know at all (trials started after Tune's last
    snapshot: they are never resumed; ended ones are kept, running ones set aside, see
    DurableOptunaSearch.reconcile).

    The experiment folder is listed once, recursively: on object storage that is a listing request per thousand
    files, where listing each trial folder cost a request per trial.
    """
    resumed = {trial["dir"] for trial in trials if trial["status"] in UNFINISHED}
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True, recursive=True))
    except OSError as e:
        logger.warning("cannot list the trial folders of %s: %s", experiment, e)
        return
    root = experiment.rstrip("/") + "/"
    for entry in entries:
        parts = entry.path[len(root):].split("/") if entry.path.startswith(root) else []
        if (entry.type == pyarrow.fs.FileType.Directory and len(parts) == 2 and parts[0].startswith("trial_")
                and parts[0] not in resumed and parts[1].startswith("checkpoint_")):
            try:
                fs.delete_dir(entry.path)
            except OSError as e:
                logger.warning("cannot delete the checkpoint %s: %s", entry.path, e)


def trial_storage() -> tuple[pyarrow.fs.FileSystem, str]:
    """Inside a trial: the filesystem and folder of the trial in the search's storage (not a local copy)."""
    from ray import tune
    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (the default repeats every parameter)."""
    return trial_dir(trial.trial_id)


def trial_dir(trial_id: str) -> str:
    return f"trial_{trial_id}"


# -- Tune's experiment state file ----------------------------------------------------------------------

def latest_state_file(fs: pyarrow.fs.FileSystem, experiment: str) -> str | None:
    """The newest experiment_state-*.json of an experiment folder, or None."""
    try:
        names = _session_files(fs, experiment, "experiment_state-", ".json")
    except OSError:
        return None
    return names[-1] if names else None


def read_state(fs: pyarrow.fs.FileSystem, experiment: str) -> list[dict[str, Any]] | None:
    """Each trial of the experiment as Tune last saved it: {trial_id, status, config, dir, last_result}."""
    path = latest_state_file(fs, experiment)
    if path is None:
        return None
    with fs.open_input_stream(path) as f:
        text = f.readall()
    try:
        state = json.loads(text)
    except json.JSONDecodeError as e:  # Tune copies it into a local folder in place: being written, or cut by a kill
        raise SearchError(f"{path}: Tune's saved experiment state cannot be read ({e}); if no driver is writing "
                          "it now, it was cut short by a kill while Tune saved it") from None
    trials = []
    for trial_json, runtime_json in state["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        trials.append({"trial_id": trial["trial_id"], "status": trial["status"], "config": trial["config"],
                       "dir": trial.get("relative_logdir") or f"trial_{trial['trial_id']}",
                       "last_result": runtime.get("last_result") or {}})
        if trial["status"] in UNFINISHED:
            trials[-1]["checkpoint"] = named_checkpoint(runtime_json)
    return trials


KEPT_FILE = "kept-trials.json"


def write_kept(fs: pyarrow.fs.FileSystem, experiment: str, searchers: dict[str, DurableOptunaSearch]) -> int:
    """On resume: record the trials the searchers kept (ended after Tune's last snapshot, so not in its state) in
    the experiment folder, in `read_state`'s form, for the ledger; returns how many. Each resume writes them all."""
    kept = [{"trial_id": tid, "status": "ERROR" if trial.state == TrialState.FAIL else "TERMINATED",
             "config": {**trial.params, STUDY_KEY: study}, "dir": trial_dir(tid), "last_result": {}}
            for study, searcher in searchers.items() for tid, trial in searcher.kept.items()]
    path = f"{experiment}/{KEPT_FILE}"
    if kept or fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        write_atomically(fs, path, json.dumps(kept).encode())
    return len(kept)


def read_trials(fs: pyarrow.fs.FileSystem, experiment: str) -> list[dict[str, Any]] | None:
    """Every trial of the experiment, as `read_state` gives them: those of Tune's saved state and those a resume
    kept (`write_kept`); None before the experiment has started."""
    trials = read_state(fs, experiment)
    if trials is None:
        return None
    try:
        with fs.open_input_stream(f"{experiment}/{KEPT_FILE}") as f:
            kept = json.loads(f.readall())
    except FileNotFoundError:
        return trials
    known = {t["trial_id"] for t in trials}
    return trials + [t for t in kept if t["trial_id"] not in known]


def adopt_kept(tuner: Any, mux: StudyMux) -> None:
    """Give a restored Tuner's scheduler the values of the trials the searchers kept (Tune restores neither)."""
    scheduler = tuner._local_tuner._tune_config.scheduler  # the object Tune's controller is given on fit
    if not isinstance(scheduler, StudyASHA):
        return
    for study, searcher in mux.searchers.items():
        for trial_id, trial in searcher.kept.items():
            scheduler.adopt(study, trial_id, trial.intermediate_values)


def named_checkpoint(runtime_json: str) -> str | None:
    """The path of the checkpoint a trial's saved runtime state would resume it from (Tune pickles its checkpoint
    manager into that JSON)."""
    from ray.tune.utils.serialization import _loads_with_cloudpickle
    manager = _loads_with_cloudpickle(runtime_json).get("checkpoint_manager")
    latest = manager.latest_checkpoint_result if manager is not None else None
    return latest.checkpoint.path.rstrip("/") if latest is not None else None


STAND_IN = "STAND_IN"


def stand_in_checkpoints(fs: pyarrow.fs.FileSystem, trials: list[dict[str, Any]]) -> list[str]:
    """Before a resume: a stand-in folder for each checkpoint Tune's snapshot names that is gone; returns them.

    `CheckpointJanitor` keeps a running trial's newest checkpoints only, so the one Tune's last snapshot
    names may have been deleted since (Tune's own `num_to_keep` forces a snapshot instead). Tune refuses to
    restore a trial from a checkpoint that does not exist; the stand-in lets it, and the trial resumes from
    the newest checkpoint in its folder (`resume_candidates`), from scratch if there is none.
    """
    made = []
    for trial in trials:
        path = trial.get("checkpoint")
        if path and fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            fs.create_dir(path)
            with fs.open_output_stream(f"{path}/{STAND_IN}") as f:
                f.write(f"stands in for a deleted checkpoint of trial {trial['trial_id']}; the trial resumes from "
                        "the newest checkpoint in its folder\n".encode())
            made.append(path)
    return made


def end_finished_trials(fs: pyarrow.fs.FileSystem, experiment: str, ended: dict[str, str],
                        snapshot_period: str | None = None) -> list[str]:
    """Set the given statuses (TERMINATED or ERROR) of trials Tune saved as unfinished; returns their ids.

    Used before `Tuner.restore`: Tune's snapshot can be older than the Optuna study's record of a
    trial's end (and the trial's checkpoints already deleted), and Tune would resume such a trial.
    `snapshot_period` (TUNE_GLOBAL_CHECKPOINT_S of this driver) replaces the saved one, which Tune's restore
    would otherwise keep from the driver that first ran the search.
    """
    path = latest_state_file(fs, experiment)
    if path is None:
        return []
    with fs.open_input_stream(path) as f:
        state = json.loads(f.readall())
    runner = state.get("runner_data")
    period_changed = (snapshot_period is not None and isinstance(runner, dict)
                      and runner.get("_checkpoint_period") != snapshot_period)
    if period_changed:
        runner["_checkpoint_period"] = snapshot_period
    changed = []
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        status = ended.get(trial["trial_id"])
        if status and trial["status"] in UNFINISHED:
            trial["status"] = status
            entry[0] = json.dumps(trial, indent=2)
            changed.append(trial["trial_id"])
    if changed or period_changed:
        write_atomically(fs, path, json.dumps(state).encode())
    return changed


def newest_searcher_state(fs: pyarrow.fs.FileSystem, experiment: str) -> dict[str, Any] | None:
    """The searcher's state Tune restores from (its newest searcher-state-*.pkl); None if there is none or it cannot
    be read (Tune copies it into a local folder in place, so a driver killed meanwhile leaves it truncated)."""
    names = _session_files(fs, experiment, "searcher-state-", ".pkl")
    if not names:
        return None
    with fs.open_input_stream(names[-1]) as f:
        data = f.readall()
    try:
        return pickle.loads(data)
    except (EOFError, pickle.UnpicklingError) as e:
        logger.warning("%s cannot be read (%s: %s)", names[-1], type(e).__name__, e)
        return None


def searcher_state_from_studies(mux: StudyMux, trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The state `StudyMux.save` writes, rebuilt from the Optuna studies and Tune's saved `trials` (`read_state`):
    each Optuna trial carries its Tune trial id and study. TPE's random start-up is reseeded, so that it does not
    propose the configs the search started with again."""
    studies = {t["trial_id"]: t["config"].get(STUDY_KEY) for t in trials}
    searchers = {}
    for name, searcher in mux.searchers.items():
        searcher._sampler.reseed_rng()
        searchers[name] = {"_ot_trials": {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in counted_trials(searcher._ot_study)
                                          if t.user_attrs.get(EXPERIMENT_ATTR) == name
                                          and studies.get(t.user_attrs.get(TUNE_TRIAL_ATTR)) == name},
                           "_completed_trials": set()}
    running = {name: {t["trial_id"] for t in trials if t["status"] in UNFINISHED and studies[t["trial_id"]] == name}
               for name in mux.searchers}
    return {"study_of": {tid: name for tid, name in studies.items() if name in mux.searchers}, "running": running,
            "searchers": searchers}


def _session_files(fs: pyarrow.fs.FileSystem, experiment: str, prefix: str, suffix: str) -> list[str]:
    """Paths of the experiment's files PREFIX<session>SUFFIX, oldest session first (Tune's own order)."""
    entries = fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True))
    return sorted(e.path for e in entries if e.type == pyarrow.fs.FileType.File and e.base_name.startswith(prefix)
                  and e.base_name.endswith(suffix))


def _session(state_file: str) -> str:
    """The session an experiment_state-<session>.json belongs to (its searcher and generator states share it)."""
    return os.path.basename(state_file)[len("experiment_state-"):-len(".json")]


SET_ASIDE = "set-aside"


def set_aside_restarts(fs: pyarrow.fs.FileSystem, experiment: str) -> list[str]:
    """Move aside the files of an experiment Tune restarted after a failed restore; returns their sessions.

    Such a restart saves a state without the trials of the one before it, and every later restore then
    starts from that state (Tune takes the newest) and fails. A resume keeps every trial it restored, so
    a newest state that lacks trials of the one before it is such a restart; its files go to SET_ASIDE/.
    """
    moved = []
    while len(states := _session_files(fs, experiment, "experiment_state-", ".json")) >= 2:
        newest, before = (_trial_ids(fs, path) for path in states[-2:][::-1])
        if before <= newest:
            break
        session = _session(states[-1])
        fs.create_dir(f"{experiment}/{SET_ASIDE}", recursive=True)
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(experiment)):
            if entry.type == pyarrow.fs.FileType.File and session in entry.base_name:
                fs.move(entry.path, f"{experiment}/{SET_ASIDE}/{entry.base_name}")
        moved.append(session)
    return moved


def drop_older_sessions(fs: pyarrow.fs.FileSystem, experiment: str) -> int:
    """Delete the state files of the experiment's earlier sessions; returns how many.

    Each resume saves its snapshots under a session name of its own, and Tune uploads every state file of its
    local copy of the folder with each snapshot: run on the storage before a resume, a snapshot would otherwise
    upload the state (O(trials)) once per earlier resume, and on that local copy (`StudyMux.save`), once more for
    the state resumed from. A restore reads the newest only.
    """
    newest = latest_state_file(fs, experiment)
    if newest is None:
        return 0
    session = _session(newest)
    older = [path for prefix, suffix in STATE_FILES for path in _session_files(fs, experiment, prefix, suffix)
             if session not in os.path.basename(path)]
    for path in older:
        fs.delete_file(path)
    return len(older)


STATE_FILES = (("experiment_state-", ".json"), ("search_gen_state-", ".json"), ("searcher-state-", ".pkl"))


def _trial_ids(fs: pyarrow.fs.FileSystem, path: str) -> set[str]:
    with fs.open_input_stream(path) as f:
        state = json.loads(f.readall())
    return {json.loads(trial)["trial_id"] for trial, _ in state["trial_data"]}


def quiet_result_grid() -> None:
    """Silence Tune's warning, at the end of `fit`, that it found no result.json or progress.csv of any trial:
    the platform turns Tune's per-trial loggers off (its trials write their own metrics), and the warning would
    list every trial of the search."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def replace_searcher(tuner: Any, searcher: Searcher) -> None:
    """Put a searcher bound to this search folder into a restored Tuner (Tune then restores its state into it)."""
    tuner._local_tuner._tune_config.search_alg = searcher


def reopen_search(fs: pyarrow.fs.FileSystem, experiment: str, resumed: set[str] | None = None) -> bool:
    """Let a restored experiment ask for trials again; returns whether its saved search generator changed.

    Tune saves that its search generator is finished, and which trials its concurrency limiter counts as live:
    a budget raised on resume needs it open again, and a trial Tune will not resume (it ended after the
    snapshot, `end_finished_trials`) must leave the live ones, or its slot would never be freed (with every
    slot so held, the resumed search would wait for ever). `resumed`: the trials Tune will resume.
    """
    try:
        states = _session_files(fs, experiment, "search_gen_state-", ".json")
    except OSError:
        return False
    if not states:
        return False
    import ray.cloudpickle as cloudpickle  # the format Tune saves its search generator state in
    with fs.open_input_stream(states[-1]) as f:
        state = cloudpickle.loads(f.readall())
    limiter = state.get("name:ConcurrencyLimiter")
    stale = set() if limiter is None or resumed is None else set(limiter["live_trials"]) - resumed
    if not state.get("finished") and not stale:
        return False
    state["finished"] = False
    if stale:
        limiter["live_trials"] = set(limiter["live_trials"]) - stale
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    write_atomically(fs, states[-1], cloudpickle.dumps(state))
    return True
