"""Pruned-trial bookkeeping of the searcher, settings, resources, and the finalize helpers (no Ray cluster)."""
import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pyarrow.fs
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from gru4rec import Config, read_param_file
from search.cli import build_parser
from search.cluster import HEADROOM, MAX_TRIALS_PER_GPU, GpuMemory, Resources, plan_resources
from search.finalize import StudyResult, exported_config, markdown_table, paramfile_text, summary
from search.settings import SearchError, SearchSettings, Store, resolve_storage
from search.spaces import default_space_file, read_space_text
from search.study import largest_config
from search.calibration import CalibratedRungs, PredictedRungs
from search.ledger import Outcome, read_results, record
from search.tune_ext import (STAND_IN, STUDY_KEY, CalibratedStudy, CheckpointJanitor, DurableOptunaSearch,
                             ResumableASHA, StudyASHA, StudyMux, counted_trials, delete_stale_checkpoints,
                             end_finished_trials, newest_searcher_state, read_state, read_trials,
                             searcher_state_from_studies, stand_in_checkpoints, write_kept)

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
    searcher = DurableOptunaSearch(SPACE, metric="mrr@20", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                                   n_epochs=3, experiment="xe_shared")
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
    searcher = DurableOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=3, experiment="xe_shared")
    searcher.suggest("a")
    searcher.on_trial_result("a", epoch_result(1, 0.1))
    searcher.on_trial_complete("a", epoch_result(1, 0.1))  # Tune's stop_trial path passes the last seen result
    searcher.on_trial_complete("a", epoch_result(1, 0.1))
    (trial,) = searcher._ot_study.trials
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.PRUNED, 0.1, {1: 0.1})


def test_searcher_state_survives_save_and_restore(tmp_path):
    searcher = DurableOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=3, experiment="xe_shared")
    searcher.suggest("a")
    searcher.save(str(tmp_path / "state.pkl"))
    restored = DurableOptunaSearch(SPACE, metric="mrr@20", mode="max", n_epochs=99, experiment="xe_shared")
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
    r = plan_resources(s, {"CPU": 2.0}, remote=False)  # auto without GPUs: CPU trials
    assert (r.gpus, r.study_gpus, r.max_concurrent, r.bundle()) == (0.0, {}, 2, {"cpu": 1.0})
    r = plan_resources(settings(gpus_per_trial=0.25), {"CPU": 16.0, "GPU": 1.0}, remote=False)
    assert (r.gpus, r.max_concurrent, r.bundle(), r.study_gpus) == (0.25, 4, {"cpu": 1.0, "gpu": 0.25}, {})
    assert plan_resources(settings(gpus_per_trial=0.5, max_concurrent=7), {"CPU": 16.0, "GPU": 1.0},
                          remote=False).max_concurrent == 7
    with pytest.raises(SearchError, match="has no GPU"):
        plan_resources(settings(gpus_per_trial=0.25), {"CPU": 2.0}, remote=False)
    assert plan_resources(settings(gpus_per_trial=0.25), {"CPU": 2.0}, remote=True).gpus == 0.25


def auto_plan(cluster: dict, n_items: int, **changes) -> Resources:
    """plan_resources with --gpus-per-trial auto on a described cluster and training data of `n_items` items."""
    s = settings(fixed={}, modes=["none", "separate", "shared"], **changes)
    train = SimpleNamespace(n_items=n_items, n_events=30_000_000, n_sessions=6_000_000)
    return plan_resources(s, cluster, remote=False, largest={p.name: largest_config(p) for p in s.plans()},
                          train=train)


def test_auto_shares_pack_small_models_and_keep_large_ones_apart():
    small = auto_plan({"CPU": 64.0, "GPU": 8.0}, 37_500, gpu_memory=80.0)
    assert set(small.study_gpus.values()) == {1 / MAX_TRIALS_PER_GPU}  # a few GiB each: capped
    assert small.max_concurrent == 8 * MAX_TRIALS_PER_GPU and small.gpus == 0.25
    large = auto_plan({"CPU": 64.0, "GPU": 8.0}, 1_000_000, gpu_memory=80.0)
    per_gpu = {share.study: share.trials_per_gpu for share in large.shares}
    assert per_gpu["xe_none"] == per_gpu["bprmax_none"] == 1  # Wx0 has 3 x 512 columns: about 47 GiB
    assert per_gpu["xe_shared"] == MAX_TRIALS_PER_GPU and 1 < per_gpu["xe_separate"] < MAX_TRIALS_PER_GPU
    for share in large.shares:  # never more than fit with the headroom
        assert share.trials_per_gpu * share.trial_bytes <= 80 * 2**30 * (1 - HEADROOM)
        assert large.study_gpus[share.study] == share.gpus and share.gpus * share.trials_per_gpu <= 1
    assert large.gpus == 1.0 and large.bundle("xe_shared") == {"cpu": 1.0, "gpu": 0.25}
    assert large.trial_bundle({STUDY_KEY: "xe_none", "layers": 64}).required_resources == {"CPU": 1.0, "GPU": 1.0}
    assert large.trial_bundle({STUDY_KEY: "xe_shared"}).required_resources == {"CPU": 1.0, "GPU": 0.25}
    mean = sum(large.study_gpus.values()) / len(large.study_gpus)
    assert large.max_concurrent == int(8 / mean)
    assert "study xe_none: 1 trials per GPU (1 GPU each), about 4" in large.share_lines()[0]
    assert large.describe() == f"1 CPU / {min(large.study_gpus.values()):g}-1 GPU by study each"


def test_auto_share_of_a_trial_larger_than_a_gpu_is_a_clear_error():
    with pytest.raises(SearchError) as info:
        auto_plan({"CPU": 64.0, "GPU": 8.0}, 1_000_000, gpu_memory=24.0)
    message = str(info.value)
    assert message.startswith("study xe_none: a trial at the largest config of its space (layers=512, batch_size=256,")
    assert "needs about 46.6 GiB of GPU memory on 1,000,000 items" in message
    assert "a GPU has 24.0 GiB (--gpu-memory), 20.4 GiB of it usable" in message and "try anyway" not in message
    with pytest.raises(SearchError, match=r"xe_none: .* 46.6 GiB .* or give --gpus-per-trial 1 to try anyway$"):
        auto_plan({"CPU": 64.0, "GPU": 8.0}, 1_000_000, gpu_memory=50.0)


def test_gpu_memory_from_the_accelerator_type_or_the_option():
    cluster = {"CPU": 64.0, "GPU": 8.0, "accelerator_type:H100": 1.0}
    r = auto_plan(cluster, 1_000_000)
    assert r.shares[0].gpu == GpuMemory(79 * 2**30, "accelerator_type:H100")
    assert auto_plan(cluster, 1_000_000, gpu_memory=139.0).shares[0].trials_per_gpu == 2
    if not torch.cuda.is_available():  # nothing tells the memory: the option is asked for
        with pytest.raises(SearchError, match="memory of the cluster's GPUs is unknown .accelerator type X1.; pass "
                                              "--gpu-memory GIB"):
            auto_plan({"CPU": 64.0, "GPU": 8.0, "accelerator_type:X1": 1.0}, 37_500)


def test_saved_shares_are_reused_and_explicit_shares_honoured():
    saved = {"xe_none": 1.0, "xe_separate": 0.5, "xe_shared": 0.25, "bprmax_none": 1.0, "bprmax_separate": 0.5,
             "bprmax_shared": 0.25}
    s = settings(study_gpus=saved, gpus_per_trial=1.0, gpu_memory=80.0)
    again = SearchSettings.from_json(s.to_json(), "search.json")
    assert again == s
    r = plan_resources(again, {"CPU": 64.0, "GPU": 8.0}, remote=False)  # no model or data needed
    assert (r.study_gpus, r.gpus, r.shares) == (saved, 1.0, [])
    assert r.share_lines()[0] == "study xe_none: 1 GPU per trial (as sized at run)"
    r = auto_plan({"CPU": 64.0, "GPU": 8.0}, 1_000_000, gpus_per_trial=0.5)
    assert (r.gpus, r.study_gpus, r.max_concurrent, r.bundle("xe_none")) == (0.5, {}, 16, {"cpu": 1.0, "gpu": 0.5})
    args = build_parser().parse_args(["run", "--train", "a", "--valid", "b", "--train-full", "c", "--test", "d",
                                      "--name", "n", "--gpu-memory", "40"])
    assert (args.gpus_per_trial, args.gpu_memory) == (None, 40.0)
    assert build_parser().parse_args(["run", "--train", "a", "--valid", "b", "--train-full", "c", "--test", "d",
                                      "--name", "n", "--gpus-per-trial", "0.5"]).gpus_per_trial == 0.5


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
                         config={}, trial_id="t", valid_mrr=0.3, valid_mrr_seeds=0.31, runner_up_margin=0.004,
                         trials={"complete": 4, "stopped early": 2, "diverged": 0, "failed": 0, "running": 0},
                         trial_hours=0.01, gpu_hours=0.0, seeds=[42, 43], test={"Recall@20": 0.7, "MRR@20": 0.35},
                         test_sd={"Recall@20": 0.01, "MRR@20": 0.02})
    row = result.row()
    assert row["config"] == "layers=64,momentum=0.1" and row["test MRR@20"] == 0.35 and row["test MRR@1"] is None
    table = pd.DataFrame([row, {"study": "bprmax_none", "config": "(not finalized)"}])
    text = markdown_table(summary(table))
    assert text.splitlines()[0].startswith("| study | config | valid MRR@20 (trial) | valid MRR@20 (mean of 2 seeds) |")
    assert "| xe_shared | layers=64,momentum=0.1 | 0.3000 | 0.3100 | 0.0040 | 0.7000 ± 0.0100 | 0.3500 ± 0.0200 | " \
           "4/2/0/0 |" in text
    assert "| bprmax_none | (not finalized) |" in text
    assert json.loads(json.dumps(row))["trials complete"] == 4


def fake_trial(tmp_path, trial_id: str, history: list[float]):
    """What ResumableASHA reads of a restored Tune trial: its id, whether it reported, and metrics.jsonl."""
    folder = tmp_path / trial_id
    folder.mkdir()
    rows = [{"mrr@20": v, "epoch": i, "training_iteration": i} for i, v in enumerate(history, 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
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


@pytest.mark.parametrize("rule", [CalibratedRungs, PredictedRungs])
def test_self_calibrating_rungs_survive_a_resume_with_the_same_decisions(tmp_path, rule):
    rng = np.random.default_rng(0)
    histories = {f"t{i}": list(np.linspace(0.1, final, 4)[1:] + rng.normal(0, 0.01, 3))
                 for i, final in enumerate(rng.uniform(0.2, 0.4, 12))}
    before = CalibratedStudy(rule, time_attr="epoch", metric="mrr@20", mode="max", max_t=3, grace_period=1,
                             reduction_factor=3)
    for trial_id, history in histories.items():  # the search before the kill, trial after trial
        trial = SimpleNamespace(trial_id=trial_id)
        for epoch, value in enumerate(history, 1):
            if before.on_trial_result(None, trial, {"epoch": epoch, "mrr@20": value}) == "STOP":
                histories[trial_id] = history[:epoch]
                break
    after = CalibratedStudy(rule, time_attr="epoch", metric="mrr@20", mode="max", max_t=3, grace_period=1,
                            reduction_factor=3)
    for trial_id, history in histories.items():  # restored by Tuner.restore
        after.on_trial_add(None, fake_trial(tmp_path, trial_id, history))
    assert after.rungs.report() == before.rungs.report() and before.rungs.report()[0].rho is not None
    for value in (0.1, 0.2, 0.3):
        new = fake_trial(tmp_path, f"new{value}", [])
        after.on_trial_add(None, new)
        result = {"epoch": 1, "mrr@20": value}
        assert after.on_trial_result(None, new, result) == before.on_trial_result(None, new, result)


def journal(path):
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def durable(path, n_epochs=3):
    return DurableOptunaSearch(SPACE, metric="mrr@20", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                               study_name="s/xe_shared", storage=journal(path), n_epochs=n_epochs,
                               experiment="xe_shared")


def test_a_trial_ended_after_the_last_snapshot_is_never_told_again(tmp_path):
    first = durable(tmp_path / "optuna.journal")
    first.suggest("a")
    first.on_trial_result("a", epoch_result(1, 0.1))
    first.save(str(tmp_path / "state.pkl"))  # Tune's snapshot: trial a still running
    first.on_trial_complete("a", epoch_result(3, 0.3))  # then Optuna records its end; then the driver dies
    resumed = durable(tmp_path / "optuna.journal")
    resumed.restore(str(tmp_path / "state.pkl"))
    resumed.on_trial_result("a", epoch_result(2, 0.25))  # Tune replays the trial: no UpdateFinishedTrialError
    resumed.on_trial_complete("a", epoch_result(3, 0.28))
    (trial,) = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "optuna.journal")).trials
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.COMPLETE, 0.3, {1: 0.1, 3: 0.3})


@pytest.fixture(params=["local", "s3"])
def experiment(request, tmp_path) -> tuple[pyarrow.fs.FileSystem, str]:
    """An experiment folder, as (filesystem, path): on a local folder or on the local S3 server."""
    if request.param == "local":
        return pyarrow.fs.LocalFileSystem(), str(tmp_path)
    return pyarrow.fs.FileSystem.from_uri(request.getfixturevalue("s3") + "/searches/one/trials")


def put(fs: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """Write a file, as Tune uploads one: on object storage its folders are only implied by its key."""
    if fs.type_name == "local":
        fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def test_trials_ended_or_started_after_the_last_snapshot_lose_their_checkpoints_on_resume(experiment):
    # Tune's snapshot has a, b running and c ended; Optuna has b ended too (the driver died before the janitor ran);
    # d started after the snapshot, so Tune will never resume it.
    fs, root = experiment
    statuses = {"a": "RUNNING", "b": "RUNNING", "c": "TERMINATED"}
    write_tune_state(root, statuses, fs=fs)
    for tid in [*statuses, "d"]:
        for n in range(2):
            put(fs, f"{root}/trial_{tid}/checkpoint_00000{n}/state.pt", "saved")
        put(fs, f"{root}/trial_{tid}/metrics.jsonl", "{}\n")
    assert end_finished_trials(fs, root, {"b": "TERMINATED", "c": "TERMINATED"}) == ["b"]
    delete_stale_checkpoints(fs, root, read_state(fs, root))
    assert {t["trial_id"]: t["status"] for t in read_state(fs, root)} == {**statuses, "b": "TERMINATED"}
    left = {tid: sorted(e.base_name for e in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/trial_{tid}"))
                        if e.base_name.startswith("checkpoint_")) for tid in "abcd"}
    assert left == {"a": ["checkpoint_000000", "checkpoint_000001"], "b": [], "c": [], "d": []}
    assert all(fs.get_file_info(f"{root}/trial_{tid}/metrics.jsonl").is_file for tid in "abcd")


def test_a_resume_snapshots_at_its_own_period_not_the_first_driver_s(tmp_path):
    # Tune's restore takes its snapshot period from the saved state; the resumed driver's period replaces it.
    fs, root = pyarrow.fs.LocalFileSystem(), str(tmp_path)
    write_tune_state(root, {"a": "RUNNING"}, runner={"_checkpoint_period": "5", "_iteration": 7})
    assert end_finished_trials(fs, root, {}, "600") == []
    saved = json.loads((tmp_path / "experiment_state-2026-01-01_00-00-00.json").read_text())
    assert saved["runner_data"] == {"_checkpoint_period": "600", "_iteration": 7}
    assert [t["status"] for t in read_state(fs, root)] == ["RUNNING"]


def test_trials_asked_after_the_last_snapshot_are_failed_on_resume(tmp_path):
    first = durable(tmp_path / "optuna.journal")
    first.suggest("a")
    first.save(str(tmp_path / "state.pkl"))
    first.suggest("b")  # asked after the snapshot: Tune will not know it
    resumed = durable(tmp_path / "optuna.journal")
    resumed.restore(str(tmp_path / "state.pkl"))
    a, b = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "optuna.journal")).trials
    assert a.state == TrialState.RUNNING and b.state == TrialState.FAIL and b.user_attrs["lost"]
    resumed.on_trial_complete("a", epoch_result(1, 0.2))  # trial a goes on as usual
    assert optuna.load_study(study_name="s/xe_shared",
                             storage=journal(tmp_path / "optuna.journal")).trials[0].state == TrialState.PRUNED


def kill_after_snapshot(tmp_path):
    """A searcher whose snapshot knows trials a, b and c; then d is asked and ends, c ends, e is asked (still
    running at the kill). Tune's own snapshot is older still: it knows a and b only. Returns the resumed mux."""
    first = durable(tmp_path / "optuna.journal")
    for trial in ("a", "b", "c"):
        first.suggest(trial)
    first.on_trial_result("a", epoch_result(1, 0.2))
    mux = StudyMux({"xe_shared": first}, {"xe_shared": 6}, "shared", "mrr@20", "max")
    mux.study_of = {t: "xe_shared" for t in "abc"}
    mux.save(str(tmp_path / "state.pkl"))
    first.suggest("d")
    first.on_trial_result("d", epoch_result(1, 0.3))
    first.on_trial_complete("d", epoch_result(2, 0.35))
    first.on_trial_complete("c", epoch_result(3, 0.25))
    first.suggest("e")
    resumed = StudyMux({"xe_shared": durable(tmp_path / "optuna.journal")}, {"xe_shared": 6}, "shared", "mrr@20",
                       "max")
    resumed.tune_trials = {"a", "b"}
    with open(tmp_path / "state.pkl", "rb") as f:
        resumed.restore_state(pickle.load(f))
    return resumed


def test_trials_ended_after_the_last_snapshot_are_kept_and_running_ones_set_aside(tmp_path):
    mux = kill_after_snapshot(tmp_path)
    searcher = mux.searchers["xe_shared"]
    study = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "optuna.journal"))
    a, b, c, d, e = study.trials
    assert (c.state, d.state, e.state) == (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    assert e.user_attrs["lost"] and not c.user_attrs.get("lost") and not d.user_attrs.get("lost")
    assert [t.user_attrs["tune_trial_id"] for t in counted_trials(study)] == ["a", "b", "c", "d"]
    assert sorted(searcher._ot_trials) == ["a", "b"] and sorted(searcher.kept) == ["c", "d"]
    assert mux.started("xe_shared") == 4  # two more to ask for a budget of 6
    assert searcher.reconcile() == [] and sorted(searcher.kept) == ["c", "d"]  # the same on every resume


def write_tune_state(folder, statuses: dict[str, str], configs: dict[str, dict] | None = None,
                     fs: pyarrow.fs.FileSystem | None = None, runner: dict | None = None) -> None:
    """A minimal Tune experiment state: what read_state reads of each trial (and `runner`, Tune's runner_data)."""
    trial_data = [[json.dumps({"trial_id": tid, "status": status, "config": (configs or {}).get(tid, {}),
                               "relative_logdir": f"trial_{tid}"}), json.dumps({"last_result": {}})]
                  for tid, status in statuses.items()]
    state = {"trial_data": trial_data, **({"runner_data": runner} if runner is not None else {})}
    put(fs or pyarrow.fs.LocalFileSystem(), f"{folder}/experiment_state-2026-01-01_00-00-00.json", json.dumps(state))


def test_kept_trials_reach_the_ledger(tmp_path):
    mux = kill_after_snapshot(tmp_path)
    experiment = tmp_path / "trials"
    experiment.mkdir()
    write_tune_state(experiment, {"a": "RUNNING", "b": "RUNNING"},
                     {t: {"study": "xe_shared", "layers": 32} for t in "ab"})
    for tid, values in {"a": [0.2], "b": [], "c": [0.2, 0.22, 0.25], "d": [0.3, 0.35]}.items():
        (experiment / f"trial_{tid}").mkdir()
        (experiment / f"trial_{tid}" / "metrics.jsonl").write_text("".join(
            json.dumps({"mrr@20": v, "epoch": i, "training_iteration": i}) + "\n" for i, v in enumerate(values, 1)))
    fs = pyarrow.fs.LocalFileSystem()
    assert read_trials(fs, str(experiment)) == read_state(fs, str(experiment))  # before any resume kept one
    assert write_kept(fs, str(experiment), mux.searchers) == 2
    trials = {t["trial_id"]: t for t in read_trials(fs, str(experiment))}
    assert sorted(trials) == ["a", "b", "c", "d"]
    assert trials["d"]["config"] == {**mux.searchers["xe_shared"].kept["d"].params, "study": "xe_shared"}
    records = {t: record("xe_shared", trials[t], read_results(fs, f"{experiment}/trial_{t}/metrics.jsonl"), 3,
                         SPACE) for t in trials}
    assert [records[t].outcome for t in "abcd"] == [Outcome.RUNNING, Outcome.RUNNING, Outcome.COMPLETE,
                                                    Outcome.STOPPED]
    assert records["d"].mrr == [0.3, 0.35] and set(records["d"].params) == set(SPACE)


def test_a_truncated_searcher_state_is_rebuilt_from_the_studies(tmp_path):
    kill_after_snapshot(tmp_path)
    experiment = tmp_path / "trials"
    experiment.mkdir()
    write_tune_state(experiment, {"a": "RUNNING", "b": "TERMINATED"}, {t: {"study": "xe_shared"} for t in "ab"})
    (experiment / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(b"\x80\x04\x95")  # cut by a kill
    fs = pyarrow.fs.LocalFileSystem()
    assert newest_searcher_state(fs, str(experiment)) is None
    mux = StudyMux({"xe_shared": durable(tmp_path / "optuna.journal")}, {"xe_shared": 6}, "shared", "mrr@20", "max")
    mux.tune_trials = {"a", "b"}
    mux.restore_state(searcher_state_from_studies(mux, read_state(fs, str(experiment))))
    searcher = mux.searchers["xe_shared"]
    assert sorted(searcher._ot_trials) == ["a", "b"] and sorted(searcher.kept) == ["c", "d"]
    assert mux.study_of == {"a": "xe_shared", "b": "xe_shared"} and mux.running == {"xe_shared": {"a"}}
    mux.restore(str(experiment / "searcher-state-2026-01-01_00-00-00.pkl"))  # Tune's own restore: done already
    searcher.on_trial_complete("a", epoch_result(3, 0.3))
    study = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "optuna.journal"))
    assert study.trials[0].state == TrialState.COMPLETE and mux.started("xe_shared") == 4


@pytest.mark.parametrize("early_stopping", ["asha", "calibrated", "predicted"])
def test_kept_trials_count_in_the_restored_scheduler_as_if_tune_had_restored_them(tmp_path, early_stopping):
    rng = np.random.default_rng(1)
    histories = {f"t{i}": list(np.linspace(0.1, final, 4)[1:] + rng.normal(0, 0.01, 3))
                 for i, final in enumerate(rng.uniform(0.2, 0.4, 12))}
    options = dict(time_attr="epoch", metric="mrr@20", mode="max", max_t=3, grace_period=1, reduction_factor=3)
    restored, adopted = StudyASHA(early_stopping, **options), StudyASHA(early_stopping, **options)
    for trial_id, history in histories.items():
        trial = fake_trial(tmp_path, trial_id, history)
        trial.config = {STUDY_KEY: "xe_shared"}
        restored.on_trial_add(None, trial)  # what Tuner.restore does for the trials it knows
        restored.on_trial_complete(None, trial, {"epoch": 3, "mrr@20": history[-1]})
        adopted.adopt("xe_shared", trial_id, dict(enumerate(history, 1)))  # a kept trial: its Optuna values
    decisions = []
    for value in np.linspace(0.05, 0.4, 15):
        for scheduler in (restored, adopted):
            new = fake_trial(tmp_path, f"new{value}-{len(decisions)}", [])
            new.config = {STUDY_KEY: "xe_shared"}
            scheduler.on_trial_add(None, new)
            decisions.append(scheduler.on_trial_result(None, new, {"epoch": 1, "training_iteration": 1,
                                                                   "mrr@20": value}))
    assert decisions[0::2] == decisions[1::2] and "STOP" in decisions and "CONTINUE" in decisions


def test_a_copied_search_writes_to_its_own_journal(tmp_path):
    (tmp_path / "old").mkdir()
    first = durable(tmp_path / "old" / "optuna.journal")
    first.suggest("a")
    first.save(str(tmp_path / "state.pkl"))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "optuna.journal").write_bytes((tmp_path / "old" / "optuna.journal").read_bytes())
    before = (tmp_path / "old" / "optuna.journal").read_bytes()
    copy = durable(tmp_path / "new" / "optuna.journal")
    copy.restore(str(tmp_path / "state.pkl"))
    copy.on_trial_complete("a", epoch_result(3, 0.4))
    assert (tmp_path / "old" / "optuna.journal").read_bytes() == before
    (trial,) = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "new" / "optuna.journal")).trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.4


def test_no_optuna_error_escapes_the_callbacks(tmp_path, monkeypatch):
    searcher = durable(tmp_path / "optuna.journal")
    searcher.suggest("a")

    def broken(*args, **kwargs):
        raise RuntimeError("storage unreachable")

    monkeypatch.setattr(searcher._ot_study, "tell", broken)
    monkeypatch.setattr(searcher._ot_trials["a"], "report", broken)
    searcher.on_trial_result("a", epoch_result(1, 0.1))
    searcher.on_trial_complete("a", epoch_result(3, 0.3))
    monkeypatch.setattr(searcher._ot_study, "ask", broken)
    assert searcher.suggest("b") is None


def test_a_trial_being_asked_when_the_driver_died_is_failed_on_resume(tmp_path):
    first = durable(tmp_path / "optuna.journal")
    first.suggest("a")
    first.save(str(tmp_path / "state.pkl"))
    study = optuna.load_study(study_name="s/xe_shared", storage=journal(tmp_path / "optuna.journal"))
    half = study.ask()  # asked, with no attributes yet, when the driver died
    half.suggest_int("layers", 32, 64, step=32)
    resumed = durable(tmp_path / "optuna.journal")
    resumed.restore(str(tmp_path / "state.pkl"))
    states = [t.state for t in optuna.load_study(study_name="s/xe_shared",
                                                   storage=journal(tmp_path / "optuna.journal")).trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL]


def test_the_snapshot_period_grows_with_the_search_to_bound_its_writes():
    from search.study import MAX_SNAPSHOT_PERIOD_S, SNAPSHOT_BYTES_PER_S, STATE_BYTES_PER_TRIAL, snapshot_period
    assert snapshot_period(1) == 1  # a small search snapshots every second
    assert snapshot_period(100) == round(100 * STATE_BYTES_PER_TRIAL / SNAPSHOT_BYTES_PER_S) == 28
    assert snapshot_period(1200) == MAX_SNAPSHOT_PERIOD_S == 300  # 336 s by the rate: capped at 5 minutes


def test_a_trial_whose_named_checkpoint_was_deleted_resumes_from_its_newest(tmp_path, monkeypatch):
    """The janitor deleted the checkpoint Tune's snapshot names: a stand-in lets Tune restore the trial, which
    resumes from the newest checkpoint in its folder, then the ones before, then Tune's."""
    import search.trainable as trainable
    from ray import tune
    fs = pyarrow.fs.LocalFileSystem()
    for index in (3, 4):
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
    named = str(tmp_path / "checkpoint_000001")
    trials = [{"trial_id": "t", "checkpoint": named}, {"trial_id": "u", "checkpoint": str(tmp_path / "checkpoint_000004")},
              {"trial_id": "v", "checkpoint": None}]
    assert stand_in_checkpoints(fs, trials) == [named]
    assert (tmp_path / "checkpoint_000001" / STAND_IN).is_file()  # Tune checks only that it exists
    monkeypatch.setattr(trainable, "trial_storage", lambda: (fs, str(tmp_path)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint(named))
    assert [os.path.basename(c.path) for c in trainable.resume_candidates()] == \
        ["checkpoint_000004", "checkpoint_000003", "checkpoint_000001"]
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint("/elsewhere/checkpoint_000000"))
    assert trainable.resume_candidates()[-1].path == "/elsewhere/checkpoint_000000"


def test_the_janitor_keeps_a_running_trial_s_newest_checkpoints(tmp_path):
    for index in range(4):
        (tmp_path / f"checkpoint_{index:06d}").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    trial = SimpleNamespace(trial_id="t", storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                                                                  trial_fs_path=str(tmp_path)))
    CheckpointJanitor(2).on_checkpoint(0, [], trial, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "checkpoint_000003", "metrics.jsonl"]
    CheckpointJanitor(2).on_trial_complete(0, [], trial)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_the_searcher_s_save_drops_the_state_it_was_resumed_from_from_tune_s_local_copy(tmp_path):
    old, new = "2026-01-01_00-00-00", "2026-01-02_00-00-00"
    for name in (f"experiment_state-{old}.json", f"search_gen_state-{old}.json", f"searcher-state-{old}.pkl",
                 f"experiment_state-{new}.json", "tuner.pkl"):
        (tmp_path / name).write_text("{}")
    mux = StudyMux({"xe_shared": durable(tmp_path / "optuna.journal")}, {"xe_shared": 2}, "shared", "mrr@20", "max")
    mux.save(str(tmp_path / f".0a1b-tmp-searcher-state-{new}.pkl"))  # as Tune saves it, before its own rename
    assert sorted(p.name for p in tmp_path.iterdir() if "state" in p.name or p.suffix == ".pkl") == \
        sorted([f".0a1b-tmp-searcher-state-{new}.pkl", f"experiment_state-{new}.json", "tuner.pkl"])
