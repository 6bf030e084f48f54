"""The search engine's choices: TPE for trials in flight, warm starts, extending a search, multi-seed selection,
the live dashboard; the last three through the CLI on a small generated search."""
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.finalize import Retrain, study_result
from search.ledger import Outcome, TrialRecord
from search.settings import Store
from search.spaces import load_space, default_space_file, plan_study
from search.study import study_concurrency, tpe_sampler
from search.tune_ext import DurableOptunaSearch, StudyMux
from search.warmstart import fit_to_space, warm_configs

BIN = Path(sys.executable).parent
SPACE = {"layers": IntDistribution(64, 512, step=32), "learning_rate": FloatDistribution(0.01, 0.25, step=0.005),
         "elu_param": CategoricalDistribution([0.5, 1, 0])}


@pytest.mark.parametrize("concurrency,startup", [(1, 10), (8, 10), (32, 32), (64, 64)])
def test_tpe_is_set_for_trials_in_flight_whatever_the_optuna_defaults(concurrency, startup):
    sampler = tpe_sampler(3, concurrency)
    assert sampler._constant_liar and sampler._multivariate and sampler._n_startup_trials == startup


def test_constant_liar_spreads_concurrent_suggestions():
    """With trials in flight, a liar TPE does not propose the same region again and again."""
    def spread(liar: bool) -> int:
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5, constant_liar=liar, multivariate=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for i in range(5):
            t = study.ask({"x": FloatDistribution(0, 1)})
            study.tell(t, -abs(t.params["x"] - 0.7))
        running = [study.ask({"x": FloatDistribution(0, 1)}) for _ in range(16)]  # 16 in flight, none told
        return len({round(t.params["x"], 2) for t in running})
    assert spread(True) > spread(False)


def test_studies_split_the_slots_and_a_finished_study_leaves_its_slots_to_the_others():
    searchers = {name: DurableOptunaSearch({"x": FloatDistribution(0, 1)}, metric="m", mode="max", n_epochs=1,
                                           experiment=name) for name in ("a", "b", "c")}
    mux = StudyMux(searchers, {"a": 2, "b": 6, "c": 6}, "shared", "m", "max")
    first = [mux.suggest(f"t{i}")["study"] for i in range(6)]
    assert sorted(first) == ["a", "a", "b", "b", "c", "c"]  # an even share of six slots
    for i in range(6):
        mux.on_trial_complete(f"t{i}", {"m": 0.1, "training_iteration": 1, "epoch": 1})
    later = [mux.suggest(f"u{i}")["study"] for i in range(8)]
    assert "a" not in later and sorted(later) == ["b"] * 4 + ["c"] * 4  # a's budget is spent: b and c take over
    assert mux.suggest("v") == "FINISHED"
    sequential = StudyMux({n: DurableOptunaSearch({"x": FloatDistribution(0, 1)}, metric="m", mode="max",
                                                  n_epochs=1, experiment=n) for n in ("a", "b")},
                          {"a": 2, "b": 2}, "sequential", "m", "max")
    assert [sequential.suggest(f"t{i}")["study"] for i in range(4)] == ["a", "a", "b", "b"]


def test_a_trial_s_end_is_persisted_before_tune_s_callbacks_delete_its_checkpoints():
    """The mux makes each trial's end durable as soon as its study records it (Tune calls the callbacks, among
    them the checkpoint janitor, only after the searcher), and again before each save."""
    searcher = DurableOptunaSearch({"x": FloatDistribution(0, 1)}, metric="m", mode="max", n_epochs=2,
                                   experiment="a")
    seen = []

    def persist():
        seen.append([t.state.name for t in searcher._ot_study.get_trials()])
    mux = StudyMux({"a": searcher}, {"a": 2}, "shared", "m", "max", persist=persist)
    mux.suggest("t0"), mux.suggest("t1")
    mux.on_trial_result("t0", {"m": 0.1, "training_iteration": 1, "epoch": 1})
    mux.on_trial_complete("t0", {"m": 0.2, "training_iteration": 1, "epoch": 2})
    assert searcher._ot_study.get_trials()[0].intermediate_values == {1: 0.1, 2: 0.2}  # steps are epochs
    assert seen == [["COMPLETE", "RUNNING"]]
    mux.on_trial_complete("t1", {"m": 0.1, "training_iteration": 1, "epoch": 1})
    assert seen[-1] == ["COMPLETE", "PRUNED"]  # stopped after its first of two epochs (the epoch, not Tune's count)
    mux.save("/dev/null")
    assert len(seen) == 3


def test_the_first_trials_are_exactly_the_warm_start_configs():
    plan = plan_study("cross-entropy", "shared", 10, load_space(default_space_file("cross-entropy")), {})
    warm = warm_configs(["best"], "/nowhere", plan)
    assert len(warm) == 7  # six published cross-entropy configs and the defaults
    assert warm[-1]["layers"] == 96 and warm[-1]["batch_size"] == 64  # the defaults, on the grid
    assert {"layers": 100, "batch_size": 32, "dropout_p_embed": 0.0, "dropout_p_hidden": 0.4, "learning_rate": 0.2,
            "momentum": 0.2, "sample_alpha": 0.5} == {**warm[[w["learning_rate"] for w in warm].index(0.2)],
                                                      "layers": 100}
    searcher = DurableOptunaSearch(plan.space, metric="mrr@20", mode="max", points_to_evaluate=warm, n_epochs=10,
                                   experiment=plan.name, sampler=tpe_sampler(0, 8))
    suggested = [searcher.suggest(f"t{i}") for i in range(len(warm) + 1)]
    assert suggested[:len(warm)] == warm and suggested[-1] not in warm
    assert fit_to_space({"layers": [500], "learning_rate": 0.3, "elu_param": 2}, SPACE) is None  # elu 2 is no option
    assert fit_to_space({"layers": [500], "learning_rate": 0.3, "elu_param": 1}, SPACE) == {
        "layers": 512, "learning_rate": 0.25, "elu_param": 1}


def test_shares_of_concurrency():
    from search.cluster import Resources
    from types import SimpleNamespace
    assert study_concurrency(SimpleNamespace(policy="shared"), Resources(1, 0, 64), 6) == 11
    assert study_concurrency(SimpleNamespace(policy="sequential"), Resources(1, 0, 64), 6) == 64


def test_multi_seed_selection_picks_the_best_mean_and_reports_mean_and_sd(tmp_path):
    store = Store(str(tmp_path / "s"))
    plan = plan_study("cross-entropy", "shared", 3, {"layers": IntDistribution(32, 64, step=32)}, {})
    picks = [TrialRecord("xe_shared", f"t{i}", Outcome.COMPLETE, {"layers": 32 * (i + 1)}, mrr=[0.1, 0.2, m])
             for i, m in enumerate([0.31, 0.30])]
    configs = [{"layers": [32], "seed": 42}, {"layers": [64], "seed": 42}]
    selection = [Retrain("xe_shared", "select", rank, seed, {}) for rank in (0, 1) for seed in (42, 43)]
    valid = {(0, 42): 0.30, (0, 43): 0.28, (1, 42): 0.31, (1, 43): 0.30}  # the second candidate wins on mean
    for job in selection:
        store.write(job.name, json.dumps({"metrics": {"MRR@20": valid[job.rank, job.seed]}, "seconds": 1.0}))
    finals = [Retrain("xe_shared", "final", 1, seed, {}) for seed in (42, 43, 44)]
    tests = [0.36, 0.34, 0.38]
    for job, mrr in zip(finals, tests):
        store.write(job.name, json.dumps({"metrics": {"MRR@20": mrr, "Recall@20": 2 * mrr}, "seconds": 2.0}))
    result = study_result(plan=plan, records=picks, picks=picks, configs=configs, selection=selection, finals=finals,
                          store=store, resources=__import__("search.cluster").cluster.Resources(1, 0, 2),
                          settings=type("S", (), {"epochs": 3, "grace_period": 1, "reduction_factor": 2})())
    assert result.trial_id == "t1" and result.valid_mrr_seeds == pytest.approx(0.305)
    assert result.runner_up_margin == pytest.approx(0.305 - 0.29)
    assert result.test["MRR@20"] == pytest.approx(0.36) and result.test_sd["MRR@20"] == pytest.approx(0.02)
    assert result.seeds == [42, 43, 44]


# --- through the CLI on a small generated search ------------------------------------------------------------

@pytest.fixture(scope="module")
def small_search(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    subprocess.run([BIN / "gru4rec", "generate", folder / "data", "--events", "6000"], check=True,
                   capture_output=True)
    space = folder / "space.jsonl"
    space.write_text('{"name": "layers", "dtype": "int", "values": [16, 32], "step": 16}\n'
                     '{"name": "learning_rate", "dtype": "float", "values": [0.05, 0.2], "step": 0.05}\n')
    data = folder / "data"
    args = [BIN / "gru4rec-search", "run", "--train", data / "train_tr.tsv", "--valid", data / "train_valid.tsv",
            "--train-full", data / "train_full.tsv", "--test", data / "test.tsv", "--name", "small", "--losses",
            "xe,bpr-max", "--modes", "shared", "--trials", "3", "--epochs", "2", "--space", space, "--fixed",
            "n_sample=32", "--storage", folder / "store", "--local-cpus", "2", "--no-dashboard", "--quiet",
            "--top-k", "2", "--seeds", "2", "--warm-start", "best"]
    run = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Optuna dashboard: gru4rec-search dashboard small" in run.stdout
    return folder


def metric_files(folder: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in (folder / "store" / "small" / "trials").glob("trial_*/metrics.jsonl")}


def test_resume_with_more_trials_runs_only_the_new_ones(small_search):
    before = metric_files(small_search)
    assert len(before) == 6
    resume = subprocess.run([str(BIN / "gru4rec-search"), "resume", "small", "--storage", str(small_search / "store"),
                             "--trials", "5", "--local-cpus", "2", "--no-dashboard", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    after = metric_files(small_search)
    assert len(after) == 10 and all(after[name] == text for name, text in before.items())  # old trials untouched
    status = subprocess.run([str(BIN / "gru4rec-search"), "status", "small", "--storage", str(small_search / "store")],
                            capture_output=True, text=True)
    assert re.search(r"xe_shared\s+5/5\s+0", status.stdout) and re.search(r"bprmax_shared\s+5/5\s+0", status.stdout)
    assert "finalized" in status.stdout  # finalized again, with the new trials
    refused = subprocess.run([str(BIN / "gru4rec-search"), "resume", "small", "--storage",
                              str(small_search / "store"), "--trials", "2"], capture_output=True, text=True)
    assert refused.returncode == 2 and "--trials 2: the search already has 5 trials per study" in refused.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_every_study_of_the_search(small_search):
    port = free_port()
    server = subprocess.Popen([str(BIN / "gru4rec-search"), "dashboard", "small", "--storage",
                               str(small_search / "store"), "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert f"http://127.0.0.1:{port}/dashboard" in server.stdout.readline()
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as reply:
                    names = {s["study_name"] for s in json.load(reply)["study_summaries"]}
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the dashboard did not come up"
                time.sleep(0.5)
        assert names == {"small/xe_shared", "small/bprmax_shared"}
    finally:
        server.kill()
        server.wait()
