"""The search benchmark: its surrogate of recorded learning curves, its virtual-clock engine, and small end-to-end
runs on both engines."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.schedulers import FIFOScheduler

# The platform's package first: bench/, added to the path below, has a search.py of the same name.
from search.ledger import METRIC
from search.trainable import MODE
from search.tune_ext import EPOCH, StudyASHA

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.append(str(BENCH))
from surrogate import Surrogate  # noqa: E402
from virtual import run_virtual  # noqa: E402

SPACE = {"layers": IntDistribution(64, 512, step=32), "learning_rate": FloatDistribution(0.01, 0.25, step=0.005),
         "elu_param": CategoricalDistribution([0.5, 1, 0])}


def curves(configs: list[dict], finals: list[float], diverge: dict[int, int] | None = None) -> pd.DataFrame:
    rows = []
    for i, (params, final) in enumerate(zip(configs, finals)):
        for epoch in range(1, 5):
            diverged = (diverge or {}).get(i) == epoch
            rows.append({"dataset": "d", "study": "xe_shared", "config_id": i, "origin": "random",
                         "params": json.dumps(params), "epoch": epoch, "mrr": 0.0 if diverged else final * epoch / 4,
                         "recall": 0.0, "loss": 1.0, "train_s": 10.0 * (i + 1), "eval_s": 1.0, "diverged": diverged})
            if diverged:
                break
    return pd.DataFrame(rows)


CONFIGS = [{"layers": 64, "learning_rate": 0.01, "elu_param": 0.5}, {"layers": 512, "learning_rate": 0.25,
                                                                     "elu_param": 0.5},
           {"layers": 288, "learning_rate": 0.13, "elu_param": 1}]


def test_a_recorded_config_gets_its_recorded_curve():
    pool = Surrogate(curves(CONFIGS, [0.2, 0.3, 0.4]), SPACE)
    for i, params in enumerate(CONFIGS):
        mrr, seconds, diverged = pool.curve(params)
        np.testing.assert_allclose(mrr, [0.2, 0.3, 0.4][i] * np.arange(1, 5) / 4)
        np.testing.assert_allclose(seconds, 10.0 * (i + 1) + 1.0)
        assert diverged == 0
    assert pool.best_final == pytest.approx(0.4)


def test_other_configs_blend_their_nearest_recorded_curves():
    pool = Surrogate(curves(CONFIGS[:2], [0.2, 0.3]), SPACE, k=2)
    near_first = pool.final({"layers": 96, "learning_rate": 0.02, "elu_param": 0.5})
    middle = pool.final({"layers": 288, "learning_rate": 0.13, "elu_param": 0.5})
    assert 0.2 < near_first < middle < 0.3 and middle == pytest.approx(0.25, abs=1e-6)  # equidistant: the mean
    other_category = pool.final({"layers": 96, "learning_rate": 0.02, "elu_param": 1})
    assert near_first < other_category < 0.3  # a different category is farther from the first config


def test_a_config_next_to_a_diverged_one_diverges_there():
    pool = Surrogate(curves(CONFIGS, [0.2, 0.3, 0.4], diverge={1: 2}), SPACE)
    mrr, seconds, diverged = pool.curve(CONFIGS[1])
    assert diverged == 2 and (mrr[1:] == 0).all() and (seconds[2:] == 0).all()
    assert pool.final({"layers": 480, "learning_rate": 0.24, "elu_param": 0.5}) == 0.0
    assert pool.best_final == pytest.approx(0.4)


@pytest.mark.skipif(not (BENCH / "data" / "curves.parquet").is_file(), reason="no recorded curves")
def test_the_benchmark_runs_end_to_end_at_small_size(tmp_path):
    curves = tmp_path / "elsewhere.parquet"  # any recorded pool file, any pool in it, by DATASET:STUDY
    curves.write_bytes((BENCH / "data" / "curves.parquet").read_bytes())
    run = subprocess.run([sys.executable, str(BENCH / "search.py"), "--quick", "--experiments", "concurrency",
                          "--curves", str(curves), "--pools", "rsc15_100k:xe_shared",
                          "--concurrency", "1,2", "--seeds", "1", "--trials", "8", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| rsc15_100k:xe_shared |")]
    assert len(table) == 12  # six methods at two concurrencies
    full = [line for line in table if "tpe full budget" in line]
    assert all("| 100.00 |" in line for line in full)  # a full-budget search trains every epoch
    written = Path(run.stdout.strip().splitlines()[-1].split("results written to ")[1])
    report = json.loads(written.read_text())
    label = "rsc15_100k:xe_shared"
    assert {row["concurrency"] for row in report["tables"][label]} == {1, 2}
    for row in report["tables"][label]:  # one seed: its regret is the median, the IQM and the whole interval
        assert row["median regret %"] == row["IQM regret %"]
        assert row["median 95% CI"] == f"{row['median regret %']:.2f}-{row['median regret %']:.2f}"
    assert (tmp_path / "figures" / "search-rsc15_100k-xe_shared.png").stat().st_size > 0
    regret = {(o["method"], o["concurrency"]): o["regret"] for o in report[f"outcomes {label}"]}  # one seed
    for row in report["paired"][label]:
        difference = regret[("platform", row["concurrency"])] - regret[(row["platform against"], row["concurrency"])]
        assert (row["lower"], row["higher"]) == (int(difference < -1e-12), int(difference > 1e-12))
        assert row["mean difference, points"] == pytest.approx(100 * difference)
    assert len(report["paired"][label]) == 10  # five other methods at two concurrencies
    log = written.with_suffix(".jsonl")
    assert len(log.read_text().splitlines()) == 12  # one line per finished search
    again = subprocess.run([sys.executable, str(BENCH / "search.py"), "--quick",
                            "--experiments", "landscape,concurrency", "--curves", str(curves), "--pools", label,
                            "--concurrency", "1,2", "--seeds", "1", "--trials", "8", "--out", str(tmp_path),
                            "--log", str(log)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "12 searches already done" in again.stdout and "c= 1 seed=0" not in again.stdout  # nothing rerun
    assert [line for line in again.stdout.splitlines() if line.startswith(f"| {label} |")] == table
    summary = json.loads(written.read_text())["pools"][label]
    recorded = pd.read_parquet(BENCH / "data" / "curves.parquet")
    recorded = recorded[(recorded["dataset"] == "rsc15_100k") & (recorded["study"] == "xe_shared")]
    by_epoch = recorded.pivot(index="config_id", columns="epoch", values="mrr").fillna(0.0)
    assert summary["configs"] == len(by_epoch)
    assert summary["best final MRR@20"] == pytest.approx(by_epoch[10].max())

    def spearman(a: np.ndarray, b: np.ndarray) -> float:  # the textbook formula, for untied values
        d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
        return 1 - 6 * float((d ** 2).sum()) / (len(a) * (len(a) ** 2 - 1))
    assert summary["rho epoch 1"] == pytest.approx(spearman(by_epoch[1].to_numpy(), by_epoch[10].to_numpy()), abs=1e-3)


def test_the_curve_recorder_starts_as_a_script():
    # bench/search.py bears the platform package's name; run as a script, the recorder must still import the package.
    run = subprocess.run([sys.executable, str(BENCH / "record_curves.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DATASET:STUDY:N_RANDOM" in run.stdout


class InTurn(optuna.samplers.BaseSampler):
    """Gives trial n the recorded config CONFIGS[n % 3], so that a test knows what every trial trains."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return CONFIGS[trial.number % len(CONFIGS)][param_name]


@pytest.mark.parametrize("concurrency, makespan", [(1, 252.0), (2, 168.0), (3, 124.0)])
def test_the_virtual_clock_runs_a_full_budget_search_as_scheduled_by_hand(concurrency, makespan):
    # The three configs' epochs last 11, 21 and 31 s (train 10 x (i + 1) s, evaluate 1 s): 44, 84 and 124 s for
    # four. One slot runs them one after another: 252 s. Two: trials 0 and 1 start at 0 s, trial 2 takes trial 0's
    # slot when it ends at 44 s and ends at 44 + 124 = 168 s, after trial 1 (84 s). Three: the longest, 124 s.
    pool = Surrogate(curves(CONFIGS, [0.2, 0.3, 0.4]), SPACE)
    run = run_virtual(pool, FIFOScheduler(), InTurn(), concurrency=concurrency, trials=3)
    assert run.ran == [4, 4, 4] and run.epochs == 3 * pool.epochs
    assert run.wall_s == pytest.approx(makespan) and run.busy_s == pytest.approx(44 + 84 + 124)
    if concurrency == 2:
        assert run.spans == [pytest.approx((0, 44)), pytest.approx((0, 84)), pytest.approx((44, 168))]
    assert run.order == pytest.approx([0.2, 0.3, 0.4]) and run.regret == pytest.approx(0.0)
    assert run.decisions == 12 and run.decision_s_per_epoch >= 0


def test_asha_on_the_virtual_clock_stops_a_poor_trial_at_its_first_rung():
    # One slot, configs in turn: at epoch 1 (the first rung) trial 3 repeats trial 0's 0.05 against 0.05, 0.075
    # and 0.1 recorded there, below the top third's cut (0.083), and stops; the first three each beat the cut of
    # those before them, and ASHA stops every trial at its last epoch.
    pool = Surrogate(curves(CONFIGS, [0.2, 0.3, 0.4]), SPACE)
    asha = StudyASHA("asha", time_attr=EPOCH, metric=METRIC, mode=MODE, max_t=pool.epochs, grace_period=1,
                     reduction_factor=3)
    run = run_virtual(pool, asha, InTurn(), concurrency=1, trials=4)
    assert run.ran == [4, 4, 4, 1] and run.epochs == 13 < 4 * pool.epochs
    assert math.isnan(run.order[3]) and run.regret == pytest.approx(0.0)
    assert run.wall_s == pytest.approx(44 + 84 + 124 + 11)


def test_a_trial_that_diverges_ends_on_that_epoch_on_the_virtual_clock():
    pool = Surrogate(curves(CONFIGS, [0.2, 0.3, 0.4], diverge={2: 2}), SPACE)
    run = run_virtual(pool, FIFOScheduler(), InTurn(), concurrency=3, trials=3)
    assert run.ran == [4, 4, 2] and math.isnan(run.order[2])
    assert run.regret == pytest.approx(0.0)  # the pool's best is the best config that does not diverge


@pytest.mark.skipif(not (BENCH / "data" / "curves.parquet").is_file(), reason="no recorded curves")
def test_the_benchmark_runs_end_to_end_on_the_virtual_clock(tmp_path):
    curves = tmp_path / "elsewhere.parquet"
    curves.write_bytes((BENCH / "data" / "curves.parquet").read_bytes())
    log = tmp_path / "log.jsonl"
    legacy = {"kind": "concurrency", "pool": "rsc15 xe", "method": "platform", "concurrency": 1, "seed": 0,
              "trials": 12, "regret": 0.5, "epochs": 1, "wall_s": 1.0, "busy_s": 1.0, "slots": 1}
    log.write_text(json.dumps(legacy) + "\n")  # a Tune record from before logs named their engine
    command = [sys.executable, str(BENCH / "search.py"), "--quick", "--engine", "virtual", "--curves", str(curves),
               "--out", str(tmp_path), "--log", str(log)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Ray instance" not in run.stdout + run.stderr  # the virtual engine does not start Ray
    assert "configs drawn uniformly" in run.stdout  # the landscape runs too, but neither studies nor warm start
    assert "rsc15 xe | platform             | c= 1 seed=0: regret" in run.stdout  # the Tune record is not its own
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| pool | method |"))
    assert header.rstrip(" |").endswith("decision ms / epoch")
    table = [line for line in lines if line.startswith("| rsc15 xe |")]
    written = Path(lines[-1].split("results written to ")[1])
    report = json.loads(written.read_text())
    rows = report["tables"]["rsc15 xe"]
    assert len(table) == len(rows) and {row["concurrency"] for row in rows} == {1, 4}
    assert all(row["decision ms / epoch"] >= 0 for row in rows)  # measured, where Tune's rows have NaN
    assert all(row["epochs % of full budget"] == 100 for row in rows if row["method"] == "tpe full budget")
    records = [json.loads(line) for line in log.read_text().splitlines()][1:]
    assert len(records) == len(rows) * 2 and all(r["engine"] == "virtual" for r in records)  # two seeds each
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "seed=0: regret" not in again.stdout  # nothing rerun
    assert [line for line in again.stdout.splitlines() if line.startswith("| rsc15 xe |")] == table
