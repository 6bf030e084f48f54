"""End to end on the rsc15_100k splits through the CLIs: a real search on a local 2-CPU Ray.

Kills and resumes are tested in test_search_chaos.

Every search runs as a subprocess in its own process group, which the fixture kills at the end (also on
failure), so no Ray process outlives a test; Ray's own files stay in its temp dir, results in tmp_path.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.fs
import pytest
from optuna.trial import TrialState

from search.cli import main
from search.ledger import read_results
from search.tune_ext import read_state

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "train_tr.tsv").is_file(), reason=f"{DATA} is not present")]

# Small trials (an epoch takes about a second) so that 2 studies x 6 trials x 3 epochs fit in ~2 minutes.
SPACE = [
    {"name": "layers", "dtype": "int", "values": [32, 64], "step": 32},
    {"name": "batch_size", "dtype": "int", "values": [64, 128], "step": 32},
    {"name": "learning_rate", "dtype": "float", "values": [0.02, 0.2], "step": 0.01},
    {"name": "dropout_p_hidden", "dtype": "float", "values": [0.0, 0.5], "step": 0.05},
    {"name": "momentum", "dtype": "float", "values": [0.0, 0.5], "step": 0.05},
]
RESULT_LINE = re.compile(r"^Recall@(\d+): ([0-9.]+) MRR@\d+: ([0-9.]+)$", re.M)


def search_args(tmp_path: Path, name: str, *extra: str) -> list:
    space = tmp_path / "space.jsonl"
    space.write_text("".join(json.dumps(entry) + "\n" for entry in SPACE))
    return [BIN / "gru4rec-search", "run", "--train", DATA / "train_tr.tsv", "--valid", DATA / "train_valid.tsv",
            "--train-full", DATA / "train_full.tsv", "--test", DATA / "test.tsv", "--name", name, "--space", space,
            "--fixed", "n_sample=256", "--trials", "6", "--storage", tmp_path / "store", "--local-cpus", "2",
            "--no-dashboard", "--grace-period", "1", "--reduction-factor", "2", "--top-k", "2", "--seeds", "2",
            "--early-stopping", "asha", *extra]


def finish(proc: subprocess.Popen, tmp_path: Path, log: str, timeout: float = 600) -> str:
    assert proc.wait(timeout=timeout) == 0, (tmp_path / log).read_text()[-5000:]
    return (tmp_path / log).read_text()


def test_search_end_to_end(tmp_path, spawn, capsys):
    db = tmp_path / "optuna.db"
    out = finish(spawn(search_args(tmp_path, "e2e", "--losses", "xe,bpr-max", "--modes", "shared", "--epochs", "3",
                                   "--optuna-storage", f"sqlite:///{db}"), "search.log"), tmp_path, "search.log")
    folder = tmp_path / "store" / "e2e"
    table = pd.read_csv(folder / "results.csv")
    studies = ["xe_shared", "bprmax_shared"]
    assert all(f"| {s} |" in (folder / "results.md").read_text() and f"| {s} |" in out for s in studies)
    assert table["study"].tolist()[:2] == studies and table["study"].tolist()[2:] == ["baseline: popularity",
                                                                                      "baseline: markov"]
    ran = table.iloc[:2]
    counted = ran[["trials complete", "trials stopped early", "trials diverged", "trials failed"]].sum(axis=1)
    assert counted.tolist() == [6, 6]
    assert ran["trials stopped early"].sum() >= 1, "ASHA stopped no trial"

    for study, stopped in zip(studies, ran["trials stopped early"]):
        trials = optuna.load_study(study_name=f"e2e/{study}", storage=f"sqlite:///{db}").trials
        assert len(trials) == 6
        pruned = [t for t in trials if t.state == TrialState.PRUNED]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(pruned) == stopped and len(complete) == 6 - stopped
        for t in pruned:  # pruned at its last epoch, with that epoch's value
            assert len(t.intermediate_values) < 3 and t.value == t.intermediate_values[max(t.intermediate_values)]
        for t in complete:
            assert sorted(t.intermediate_values) == [1, 2, 3] and t.value == t.intermediate_values[3]
        assert (folder / f"{study}_history.png").stat().st_size > 0
    assert list((folder / "trials").glob("trial_*/events.out.tfevents.*")), "no TensorBoard logs"
    # Each epoch's full record is in the trial's metrics file; Tune hears only what its scheduler and searcher read.
    fs = pyarrow.fs.LocalFileSystem()
    for trial in read_state(fs, str(folder / "trials")):
        lines = read_results(fs, str(folder / "trials" / trial["dir"] / "metrics.jsonl"))
        assert lines and all({"mrr@20", "recall@20", "loss", "epoch_seconds", "epoch"} <= set(r) for r in lines)
        reported = set(trial["last_result"])
        assert {"mrr@20", "epoch", "device"} <= reported and not reported & {"recall@20", "loss", "epoch_seconds",
                                                                             "events_per_s", "diverged"}, reported
        assert trial["last_result"]["mrr@20"] == lines[-1]["mrr@20"]

    # The exported paramfiles, run by `gru4rec run`, reproduce the test metrics of the winner's retrain with
    # the paramfile's seed exactly (the table reports the mean over seeds).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {study: spawn([BIN / "gru4rec", "run", DATA / "train_full.tsv", "-pf", folder / f"{study}_best.py",
                          "-t", DATA / "test.tsv", "-m", "1", "5", "10", "20", "-e", "standard"], f"{study}.log",
                         env=env) for study in studies}
    for study, proc in runs.items():
        printed = RESULT_LINE.findall(finish(proc, tmp_path, f"{study}.log"))
        assert [int(k) for k, _, _ in printed] == [1, 5, 10, 20]
        record = json.loads((folder / f"{study}_result.json").read_text())
        rank = next(c["rank"] for c in record["candidates"] if c["params"] == record["params"])
        seed = record["config"]["seed"]
        retrain = json.loads((folder / "retrain" / study / f"final-{rank}-seed{seed}.json").read_text())["metrics"]
        for k, recall, mrr in printed:
            assert float(recall) == pytest.approx(retrain[f"Recall@{k}"], abs=1e-6)
            assert float(mrr) == pytest.approx(retrain[f"MRR@{k}"], abs=1e-6)
        assert record["test"]["MRR@20"] == pytest.approx(
            sum(json.loads(p.read_text())["metrics"]["MRR@20"] for p in (folder / "retrain" / study).glob(
                f"final-{rank}-seed*.json")) / len(record["seeds"]))

    assert main(["status", "e2e", "--storage", str(tmp_path / "store")]) == 0
    status = capsys.readouterr().out
    assert re.search(r"xe_shared\s+6/6\s+0", status) and re.search(r"bprmax_shared\s+6/6\s+0", status)
    assert "finalized" in status
    assert main(["export", "e2e", "--storage", str(tmp_path / "store")]) == 0
    assert pd.read_csv(folder / "results.csv").equals(table)
