"""Every private part of Ray Tune, Ray's OptunaSearch and Optuna that `search/tune_ext.py` relies on, one test each.

`pyproject.toml` pins Ray and Optuna to the releases this code is tested with; when a new release is allowed,
these tests say what it changed, by name, before a resume breaks in a user's search.
"""
import inspect
import json
import os
import shutil

import optuna
import pyarrow.fs
import pytest
import ray
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray import tune
from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
from ray.tune.search.optuna import OptunaSearch

from search.tune_ext import (latest_state_file, named_checkpoint, newest_searcher_state, read_state, reopen_search,
                             replace_searcher, set_aside_restarts, trial_storage)

SPACE = {"x": FloatDistribution(0.0, 1.0)}


def changed(what: str, used_by: str) -> str:
    return f"this Ray/Optuna release changed {what}, which search/tune_ext.py relies on in {used_by}"


@pytest.fixture
def searcher():
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    found = OptunaSearch(space=SPACE, metric="m", mode="max", study_name=study.study_name,
                         storage=study._storage)
    found.suggest("t1")
    return found


@pytest.mark.parametrize("name, kind", [("_ot_trials", dict), ("_ot_study", optuna.Study), ("_study_name", str),
                                        ("_space", dict), ("_metric", str), ("_completed_trials", set)])
def test_optuna_search_keeps_its_state_in_these_attributes(searcher, name, kind):
    assert isinstance(getattr(searcher, name, None), kind), changed(f"OptunaSearch.{name}", "DurableOptunaSearch")
    assert hasattr(searcher, "_sampler") and hasattr(searcher, "_storage"), \
        changed("OptunaSearch._sampler/_storage", "DurableOptunaSearch.restore_state")


def test_optuna_search_state_is_its_pickled_dict_keyed_by_tune_trial(searcher, tmp_path):
    assert isinstance(searcher._ot_trials["t1"], optuna.trial.Trial), \
        changed("OptunaSearch._ot_trials values (Optuna trials by Tune trial id)", "DurableOptunaSearch.suggest")
    searcher.save(str(tmp_path / "state.pkl"))
    import pickle
    with open(tmp_path / "state.pkl", "rb") as f:
        state = pickle.load(f)
    assert isinstance(state, dict) and "_ot_trials" in state and "_ot_study" in state, \
        changed("what OptunaSearch.save writes (the searcher's __dict__)", "DurableOptunaSearch.restore_state")


def test_optuna_study_and_trials_expose_storage_and_trial_ids(searcher):
    study, trial = searcher._ot_study, searcher._ot_trials["t1"]
    assert isinstance(study._storage, optuna.storages.BaseStorage), changed("Study._storage", "reconcile/_finished")
    assert isinstance(trial._trial_id, int), changed("Trial._trial_id", "_finished/restore_state")
    frozen = study.get_trials(deepcopy=False)[0]
    assert frozen._trial_id == trial._trial_id, changed("FrozenTrial._trial_id", "reconcile")
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "lost", "test")
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL, \
        changed("BaseStorage.set_trial_state_values/get_trial", "reconcile")
    study.enqueue_trial({"x": 0.5}, skip_if_exists=False)
    assert study.ask(fixed_distributions=SPACE).params == {"x": 0.5}, \
        changed("Study.enqueue_trial/ask(fixed_distributions=...)", "DurableOptunaSearch.retry")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished two-trial Tune experiment driven by OptunaSearch in a temporary storage folder, and its trainable
    (defined here, so that Ray ships it by value to workers that cannot import this test module)."""
    root = tmp_path_factory.mktemp("tune")

    def trainable(config):
        fs, folder = trial_storage()
        for step in range(2):
            tune.report({"m": config["x"] + step, "folder": folder,
                         "is_dir": fs.get_file_info(folder).type == pyarrow.fs.FileType.Directory})

    ray.shutdown()  # a Ray left by an earlier test would be joined instead of started
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=OptunaSearch(space=SPACE, metric="m", mode="max"), num_samples=2, max_concurrent_trials=2),
        run_config=tune.RunConfig(name="exp", storage_path=str(root), verbose=0))
    tuner.fit()
    yield str(root / "exp"), trainable
    ray.shutdown()


def test_the_experiment_state_file_lists_trials_with_id_status_config_and_result(experiment):
    folder, _ = experiment
    trials = read_state(pyarrow.fs.LocalFileSystem(), folder)
    assert trials is not None, changed("the experiment_state-*.json file of an experiment folder", "read_state")
    assert len(trials) == 2 and all(0 <= t["config"]["x"] <= 1 for t in trials), \
        changed("trial_data's trial configs", "read_state")
    assert all(t["status"] == "TERMINATED" and t["last_result"].get("training_iteration") == 2 for t in trials), \
        changed("trial_data's statuses or runtime last_result", "read_state")


def test_a_trial_finds_its_folder_in_the_storage(experiment):
    folder, _ = experiment
    for trial in read_state(pyarrow.fs.LocalFileSystem(), folder):
        assert trial["last_result"]["folder"] == f"{folder}/{trial['dir']}", \
            changed("tune.get_context().get_storage() (storage_filesystem, trial_fs_path)", "trial_storage")


def test_the_search_generator_state_records_whether_it_finished(experiment):
    import ray.cloudpickle as cloudpickle
    folder, _ = experiment
    fs = pyarrow.fs.LocalFileSystem()
    states = sorted(e.path for e in fs.get_file_info(pyarrow.fs.FileSelector(folder))
                    if e.base_name.startswith("search_gen_state-"))
    assert states, changed("the search_gen_state-* file of an experiment folder", "reopen_search")
    with open(states[-1], "rb") as f:
        state = cloudpickle.load(f)
    assert isinstance(state, dict) and "finished" in state, \
        changed("the 'finished' entry of the search generator state", "reopen_search")
    with open(states[-1], "wb") as f:
        cloudpickle.dump({**state, "finished": True}, f)
    assert reopen_search(fs, folder) and not reopen_search(fs, folder)  # reopened once, it stays open
    with open(states[-1], "rb") as f:
        reopened = cloudpickle.load(f)
    assert reopened["finished"] is False and reopened.keys() == state.keys()
    limiter = reopened.get("name:ConcurrencyLimiter")
    assert limiter is not None and "live_trials" in limiter and "num_unfinished_live_trials" in limiter, \
        changed("the concurrency limiter's saved live trials", "reopen_search")
    limiter["live_trials"] = {"ended", "running"}  # as saved by a snapshot taken while both ran
    limiter["num_unfinished_live_trials"] = 2
    with open(states[-1], "wb") as f:
        cloudpickle.dump(reopened, f)
    assert reopen_search(fs, folder, resumed={"running"})  # "ended" ended after the snapshot
    with open(states[-1], "rb") as f:
        trimmed = cloudpickle.load(f)["name:ConcurrencyLimiter"]
    assert trimmed["live_trials"] == {"running"} and trimmed["num_unfinished_live_trials"] == 1


def test_a_restored_tuner_takes_its_searcher_from_the_local_tuner_config(experiment):
    folder, trainable = experiment
    restored = tune.Tuner.restore(folder, trainable=trainable)
    searcher = OptunaSearch(space=SPACE, metric="m", mode="max")
    replace_searcher(restored, searcher)
    assert restored._local_tuner._tune_config.search_alg is searcher, \
        changed("Tuner._local_tuner._tune_config.search_alg", "replace_searcher")


def test_the_saved_searcher_and_generator_states_are_named_by_the_session_of_the_experiment_state(experiment):
    folder, _ = experiment
    fs = pyarrow.fs.LocalFileSystem()
    names = [e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(folder))]
    sessions = [n[len("experiment_state-"):-len(".json")] for n in names if n.startswith("experiment_state-")]
    assert len(sessions) == 1 and f"searcher-state-{sessions[0]}.pkl" in names \
        and f"search_gen_state-{sessions[0]}.json" in names, \
        changed("the names of the experiment's state files (one session string each)", "set_aside_restarts")
    state = newest_searcher_state(fs, folder)
    assert isinstance(state, dict) and "_ot_trials" in state, \
        changed("searcher-state-*.pkl (a plain pickle of what Searcher.save wrote)", "newest_searcher_state")
    assert set_aside_restarts(fs, folder) == []


def test_a_snapshot_saves_the_searcher_before_it_uploads():
    import inspect
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController
    snapshot = inspect.getsource(_ExperimentCheckpointManager.sync_up_experiment_state)
    assert 0 <= snapshot.find("save_fn()") < snapshot.find(".sync_up("), \
        changed("the order of saving and uploading in a snapshot", "StudyMux.persist (the journal push)")
    assert "self._search_alg.save_to_dir(" in inspect.getsource(TuneController.save_to_dir), \
        changed("TuneController.save_to_dir saving the searcher at each snapshot", "StudyMux.persist")


def test_a_restored_controller_takes_its_snapshot_period_from_the_saved_state(experiment):
    from ray.tune.execution.tune_controller import TuneController
    folder, _ = experiment
    path = latest_state_file(pyarrow.fs.LocalFileSystem(), folder)
    with open(path) as f:
        runner = json.load(f)["runner_data"]
    assert isinstance(runner, dict) and "_checkpoint_period" in runner, \
        changed("runner_data['_checkpoint_period'] in the experiment state", "end_finished_trials(snapshot_period)")
    restore = inspect.getsource(TuneController.__setstate__)
    assert "self.__dict__.update(state)" in restore and "_create_checkpoint_manager()" in restore, \
        changed("TuneController.__setstate__ rebuilding its checkpoint manager from the saved runner_data",
                "end_finished_trials(snapshot_period)")


def test_without_num_to_keep_a_trial_s_checkpoints_force_no_snapshot_and_callbacks_hear_of_each():
    import inspect
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    assert "if not self._sync_every_n_trial_checkpoints" in \
        inspect.getsource(_ExperimentCheckpointManager.on_trial_checkpoint), \
        changed("forced snapshots after num_to_keep checkpoints of a trial", "CheckpointJanitor (num_to_keep=None)")
    assert list(inspect.signature(tune.Callback.on_checkpoint).parameters)[1:5] == \
        ["iteration", "trials", "trial", "checkpoint"], changed("Callback.on_checkpoint", "CheckpointJanitor")


def test_a_trial_s_saved_runtime_state_names_the_checkpoint_it_resumes_from(tmp_path):
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager, _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig())
    assert named_checkpoint(metadata.get_json_state()) is None
    for n in range(2):
        (tmp_path / f"checkpoint_00000{n}").mkdir()
        metadata.checkpoint_manager.register_checkpoint(_TrainingResult(
            tune.Checkpoint(str(tmp_path / f"checkpoint_00000{n}")), {"training_iteration": n + 1}))
    metadata.invalidate_cache()  # as Tune does after a trial's checkpoint
    assert named_checkpoint(metadata.get_json_state()) == str(tmp_path / "checkpoint_000001"), \
        changed("the checkpoint manager pickled in a trial's runtime state", "named_checkpoint/stand_in_checkpoints")


def test_a_function_trial_restores_from_any_folder_at_its_checkpoint_s_path(tmp_path):
    """Tune checks only that the checkpoint it restores a function trial from exists; the trial itself chooses
    what to load (`resume_candidates`), so a stand-in folder lets a trial whose checkpoint was deleted resume."""
    import inspect
    from ray.tune.trainable.function_trainable import FunctionTrainable
    from ray.tune.trainable.trainable import Trainable
    restore = inspect.getsource(Trainable.restore)
    assert "_exists_at_fs_path" in restore and "FunctionTrainable" in restore, \
        changed("Trainable.restore's check of a checkpoint", "stand_in_checkpoints")
    assert "loaded_checkpoint = checkpoint_result.checkpoint" in inspect.getsource(FunctionTrainable.load_checkpoint), \
        changed("FunctionTrainable.load_checkpoint (it reads nothing of the checkpoint)", "stand_in_checkpoints")


class ListingSearch(OptunaSearch):
    """OptunaSearch that notes the folder Tune saves it into, and what that folder holds then."""

    def save(self, checkpoint_path: str) -> None:
        folder = os.path.dirname(checkpoint_path)
        self.saved_into = (folder, sorted(os.listdir(folder)))
        super().save(checkpoint_path)


def test_a_resumed_session_saves_into_a_local_copy_holding_the_state_it_resumed_from(experiment, tmp_path):
    folder, trainable = experiment
    shutil.copytree(folder, tmp_path / "exp")
    restored = tune.Tuner.restore(str(tmp_path / "exp"), trainable=trainable)
    searcher = ListingSearch(space=SPACE, metric="m", mode="max")
    replace_searcher(restored, searcher)
    restored.fit()
    local, names = searcher.saved_into
    states = [n for n in names if n.startswith("experiment_state-")]
    assert local != str(tmp_path / "exp") and len(states) == 2 and states[0] in os.listdir(folder), \
        changed("the driver's local copy of the experiment folder (the state files of the session a restore started "
                "from, next to the new session's, written before the searcher's)", "StudyMux.save/drop_older_sessions")
    upload = inspect.getsource(_ExperimentCheckpointManager.sync_up_experiment_state)
    assert "sync_up(" in upload and "driver_staging_path" in upload, \
        changed("the upload of the whole local copy at each snapshot", "StudyMux.save/drop_older_sessions")
