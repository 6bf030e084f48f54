"""Pruned-trial bookkeeping of the searcher, settings, resources, and the finalize helpers (no Ray cluster)."""
import json
import os
from types import SimpleNamespace

import optuna
import pandas as pd
import pyarrow.fs
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from gru4rec import Config, read_param_file
from search.finalize import StudyResult, exported_config, markdown_table, paramfile_text
from search.spaces import default_space_file, read_space_text
from search.study import (PrunedAwareOptunaSearch, ResumableASHA, SearchError, SearchSettings, Store,
                          plan_resources, resolve_storage)

SPACE = {"layers": IntDistribution(32, 64, step=32), "learning_rate": FloatDistribution(0.01, 0.2, step=0.01)}


def epoch_result(epoch: int, mrr: float) -> dict:
    return {"mrr@20": mrr, "recall@20": 2 * mrr, "epoch": epoch, "training_iteration": epoch}


def run_trials(searcher: OptunaSearch) -> list:
    """Four trials as Tune drives them: the result a trial stops on goes only to on_trial_complete."""
    for trial_id in "abcd":
        searcher.suggest(trial_id)
    searcher.on_trial_result("a", epoch_result(1, 0.10))
    searcher.on_trial_result("a", epoch_result(2, 0.20))
    searcher.on_trial_complete("a", epoch_result(3, 0.30))  # ran every epoch
    searcher.on_trial_complete("b", epoch_result(1, 0.05))  # stopped by ASHA at its first rung
    searcher.on_trial_result("c", epoch_result(1, 0.12))
    searcher.on_trial_complete("c", epoch_result(2, 0.15))  # stopped by ASHA at the second rung
    searcher.on_trial_complete("d", error=True)  # worker failed for good
    return searcher._ot_study.trials


def test_stopped_trials_are_pruned_with_their_last_value():
    searcher = PrunedAwareOptunaSearch(SPACE, metric="mrr@20", mode="max",
                                       sampler=optuna.samplers.TPESampler(seed=0), n_epochs=3)
    a, b, c, d = run_trials(searcher)
    assert (a.state, a.value, a.intermediate_values) == (TrialState.COMPLETE, 0.30, {1: 0.10, 2: 0.20, 3: 0.30})
    assert (b.state, b.value, b.intermediate_values) == (TrialState.PRUNED, 0.05, {1: 0.05})
    assert (c.state, c.value, c.intermediate_values) == (TrialState.PRUNED, 0.15, {1: 0.12, 2: 0.15})
    assert (d.state, d.value) == (TrialState.FAIL, None)


def test_ray_optuna_search_alone_would_record_them_as_complete():
    """Why the subclass exists: the base class turns ASHA-stopped trials into finished ones."""
    searcher = OptunaSearch(SPACE, metric="mrr@20", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    a, b, c, d = run_trials(searcher)
    assert [t.state for t in (a, b, c)] == [TrialState.COMPLETE] * 3
    assert b.value == 0.05


def test_repeated_completion_and_already_reported_step_are_harmless():
    searcher = PrunedAwareOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=3)
    searcher.suggest("a")
    searcher.on_trial_result("a", epoch_result(1, 0.1))
    searcher.on_trial_complete("a", epoch_result(1, 0.1))  # Tune's stop_trial path passes the last seen result
    searcher.on_trial_complete("a", epoch_result(1, 0.1))
    (trial,) = searcher._ot_study.trials
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, 0.1, {1: 0.1})


def test_searcher_state_survives_save_and_restore(tmp_path):
    searcher = PrunedAwareOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=3)
    searcher.suggest("a")
    searcher.save(str(tmp_path / "state.pkl"))
    restored = PrunedAwareOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=99)
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_complete("a", epoch_result(2, 0.2))
    assert restored._ot_study.trials[0].state == TrialState.PRUNED


def settings(**changes) -> SearchSettings:
    spaces = {loss: {"source": str(default_space_file(loss)), "text": read_space_text(default_space_file(loss))}
              for loss in ("cross-entropy", "bpr-max")}
    values = dict(name="s1", train="tr", valid="va", train_full="tf", test="te", losses=["cross-entropy", "bpr-max"],
                  modes=["none", "shared"], spaces=spaces, fixed={"n_sample": "256"}, trials=6, epochs=3)
    values.update(changes)
    return SearchSettings(**values)


def test_settings_round_trip_and_study_order():
    s = settings()
    s.validate()
    again = SearchSettings.from_json(s.to_json(), "search.json")
    assert again == s
    assert [p.name for p in s.plans()] == ["xe_none", "xe_shared", "bprmax_none", "bprmax_shared"]
    assert s.optuna_study_name(s.plans()[0]) == "s1/xe_none"
    assert settings(optuna_study="round1").optuna_study_name(s.plans()[0]) == "round1/xe_none"


@pytest.mark.parametrize("changes,needle", [
    (dict(name="a/b"), "--name 'a/b'"),
    (dict(trials=0), "--trials must be an integer >= 1"),
    (dict(grace_period=4), "--grace-period must be an integer in 1..3"),
    (dict(reduction_factor=1), "--reduction-factor must be a number > 1"),
    (dict(gpus_per_trial=-1), "--gpus-per-trial"),
])
def test_bad_settings(changes, needle):
    with pytest.raises(SearchError) as info:
        settings(**changes).validate()
    assert needle in str(info.value)


def test_resources_and_concurrency():
    s = settings()
    assert plan_resources(s, {"CPU": 2.0}, remote=False).max_concurrent == 2
    r = plan_resources(s, {"CPU": 16.0, "GPU": 1.0}, remote=False)
    assert (r.gpus, r.max_concurrent, r.bundle()) == (0.25, 4, {"cpu": 1.0, "gpu": 0.25})
    assert plan_resources(settings(gpus_per_trial=0.5, max_concurrent=7), {"CPU": 16.0, "GPU": 1.0},
                          remote=False).max_concurrent == 7
    with pytest.raises(SearchError, match="has no GPU"):
        plan_resources(settings(gpus_per_trial=0.25), {"CPU": 2.0}, remote=False)
    assert plan_resources(settings(gpus_per_trial=0.25), {"CPU": 2.0}, remote=True).gpus == 0.25


def test_store_writes_atomically_and_refuses_unwritable_roots(tmp_path):
    store = Store(str(tmp_path / "root" / "s1"))
    store.check_writable()
    store.write("a/b.txt", "hello")
    assert store.read_text("a/b.txt") == "hello" and store.read_text("missing") is None
    assert sorted(os.listdir(tmp_path / "root" / "s1")) == ["a"]
    (tmp_path / "file").write_text("")
    with pytest.raises(SearchError, match="not writable"):
        Store(str(tmp_path / "file" / "s1")).check_writable()
    assert resolve_storage("s3://bucket/x/") == "s3://bucket/x"
    assert os.path.isabs(resolve_storage("relative/dir"))


def test_exported_paramfile_is_official_and_reads_back_to_the_same_config(tmp_path):
    params = {"loss": "cross-entropy", "embedding": "layersize", "constrained_embedding": False, "layers": 64,
              "learning_rate": 0.13, "n_epochs": 3, "n_sample": "256"}
    text, config = exported_config(params)
    assert config == Config.from_dict(params)
    assert config.embedding == 64 and "('embedding', 64)" in text and "seed" not in text
    text, config = exported_config({**params, "seed": 7})
    path = tmp_path / "p.py"
    path.write_text(text)
    assert Config.from_dict(read_param_file(path)).seed == 7 == config.seed
    assert paramfile_text(config) == text


def test_results_row_and_markdown():
    result = StudyResult(study="xe_shared", loss="cross-entropy", mode="shared", params={"layers": 64, "momentum": 0.1},
                         config={}, trial_id="t", valid_mrr=0.3, valid_recall=0.6, trials_run=6, trials_stopped=2,
                         trials_failed=0, trial_hours=0.01, gpu_hours=0.0, test={"Recall@20": 0.7, "MRR@20": 0.35})
    row = result.row()
    assert row["config"] == "layers=64,momentum=0.1" and row["test MRR@20"] == 0.35 and row["test MRR@1"] is None
    table = pd.DataFrame([row, {"study": "bprmax_none", "config": "(no trial finished)"}])
    text = markdown_table(table)
    assert text.splitlines()[0].startswith("| study | config | valid MRR@20 |")
    assert "| xe_shared | layers=64,momentum=0.1 | 0.3000 | 0.6000 |" in text
    assert "| bprmax_none | (no trial finished) |" in text
    assert json.loads(json.dumps(row))["trials run"] == 6


def fake_trial(tmp_path, trial_id: str, history: list[float]):
    """What ResumableASHA reads of a restored Tune trial: its id, whether it reported, and result.json."""
    folder = tmp_path / trial_id
    folder.mkdir()
    rows = [{"mrr@20": v, "training_iteration": i} for i, v in enumerate(history, 1)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(folder))
    return SimpleNamespace(trial_id=trial_id, has_reported_at_least_once=bool(rows), storage=storage)


@pytest.mark.parametrize("resumable,decision", [(True, "STOP"), (False, "CONTINUE")])
def test_asha_rungs_survive_a_resume(tmp_path, resumable, decision):
    cls = ResumableASHA if resumable else ASHAScheduler
    scheduler = cls(time_attr="training_iteration", metric="mrr@20", mode="max", max_t=3, grace_period=1,
                    reduction_factor=2)
    for trial_id, history in (("a", [0.30, 0.35, 0.40]), ("b", [0.25, 0.30]), ("c", [0.28])):
        scheduler.on_trial_add(None, fake_trial(tmp_path, trial_id, history))  # restored by Tuner.restore
    new = fake_trial(tmp_path, "new", [])
    scheduler.on_trial_add(None, new)
    assert scheduler.on_trial_result(None, new, {"training_iteration": 1, "mrr@20": 0.1}) == decision
