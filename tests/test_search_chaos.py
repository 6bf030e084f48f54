"""A search that survives kills: the driver SIGKILLed mid-trial, between Optuna's record of trials' ends and
Tune's next snapshot (of a trial Tune's snapshot has as running, and of one started after it), and mid-retrain,
and a trial's worker killed once; then resumed to the end.

Run with the default journal storage and with an SQLite RDB. Each driver runs in its own process group,
killed whole (driver and the local Ray it started), as when the machine running it goes away.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs
import pytest
from optuna.trial import TrialState

from search.ledger import UNFINISHED, read_results
from search.settings import SearchError
from search.tune_ext import counted_trials, read_state, read_trials

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "train_tr.tsv").is_file(), reason=f"{DATA} is not present")]
SPACE = [
    {"name": "layers", "dtype": "int", "values": [32, 64], "step": 32},
    {"name": "batch_size", "dtype": "int", "values": [64, 128], "step": 64},
    {"name": "learning_rate", "dtype": "float", "values": [0.05, 0.2], "step": 0.05},
    {"name": "momentum", "dtype": "float", "values": [0.0, 0.5], "step": 0.25},
]
TRIALS, EPOCHS = 12, 3
# A longer snapshot period than the platform's 1 s widens the window between Optuna's record of a trial's
# end and Tune's next snapshot, which is where the second kill lands.
ENV = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "5", "OMP_NUM_THREADS": "1"}


class Search:
    """The commands of one search folder, their logs, and what its files say."""

    def __init__(self, tmp_path: Path, optuna_url: str | None):
        self.tmp = tmp_path
        self.store = tmp_path / "store"
        self.folder = self.store / "chaos"
        self.experiment = self.folder / "trials"
        self.optuna_url = optuna_url
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, log: str, env: dict | None = None) -> subprocess.Popen:
        out = open(self.tmp / log, "w")
        proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                env={**ENV, **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self) -> subprocess.Popen:
        space = self.tmp / "space.jsonl"
        space.write_text("".join(json.dumps(e) + "\n" for e in SPACE))
        extra = ["--optuna-storage", self.optuna_url] if self.optuna_url else []
        return self.start(BIN / "gru4rec-search", "run", "--train", DATA / "train_tr.tsv", "--valid",
                          DATA / "train_valid.tsv", "--train-full", DATA / "train_full.tsv", "--test",
                          DATA / "test.tsv", "--name", "chaos", "--losses", "xe", "--modes", "shared", "--space", space,
                          "--fixed", "n_sample=128", "--trials", TRIALS, "--epochs", EPOCHS, "--storage", self.store,
                          "--local-cpus", "2", "--max-concurrent", "2", "--no-dashboard", "--quiet",
                          "--grace-period", "1", "--reduction-factor", "2", "--top-k", "2", "--seeds", "2", *extra,
                          log="run.log")

    def resume(self, log: str, env: dict | None = None) -> subprocess.Popen:
        return self.start(BIN / "gru4rec-search", "resume", "chaos", "--storage", self.store, "--local-cpus", "2",
                          "--no-dashboard", "--quiet", log=log, env=env)

    def lock_holder(self) -> int | None:
        try:
            return json.loads((self.folder / "driver.lock").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def tune_trials(self) -> list[dict]:
        try:
            return read_state(pyarrow.fs.LocalFileSystem(), str(self.experiment)) or []
        except (SearchError, OSError, KeyError):
            return []  # being written

    def ledger_trials(self) -> list[dict]:
        """Tune's trials and those a resume kept (ended after Tune's last snapshot)."""
        return read_trials(pyarrow.fs.LocalFileSystem(), str(self.experiment)) or []

    def optuna_trials(self, counted: bool = False) -> list:
        """The study's trials (`counted`: but those a resume set aside as lost)."""
        url = self.optuna_url
        if url is None:
            if not (self.folder / "optuna.journal").exists():
                return []
            from optuna.storages.journal import JournalFileBackend
            storage = optuna.storages.JournalStorage(JournalFileBackend(str(self.folder / "optuna.journal")))
        else:
            storage = url
        try:
            study = optuna.load_study(study_name="chaos/xe_shared", storage=storage)
        except KeyError:
            return []
        return counted_trials(study) if counted else study.trials

    def results(self, trial_dir: str) -> list[dict]:
        return read_results(pyarrow.fs.LocalFileSystem(), str(self.experiment / trial_dir / "metrics.jsonl"))

    def wait_for(self, proc: subprocess.Popen, log: str, what: str, condition, timeout: float = 300):
        deadline = time.time() + timeout
        while not condition():
            assert proc.poll() is None, f"the driver ended before {what}:\n" + (self.tmp / log).read_text()[-3000:]
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


def worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::(ImplicitFunc|gru4rec_trial)"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def search(tmp_path, request):
    found = Search(tmp_path, None if request.param == "journal" else f"sqlite:///{tmp_path}/optuna.db")
    yield found
    for proc in found.procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.parametrize("search", ["journal", "sqlite"], indirect=True)
def test_kills_at_three_moments_and_a_worker_kill_leave_a_complete_search(search):
    # 1. The driver dies in the middle of a trial.
    driver = search.run()
    search.wait_for(driver, "run.log", "a trial mid-way", lambda: any(
        t["status"] == "RUNNING" and len(search.results(t["dir"])) >= 1 for t in search.tune_trials()))
    search.kill(driver)

    # A second driver on the same search is refused while the first runs. The first snapshots rarely, so that
    # trials start and end between two of its snapshots.
    driver = search.resume("resume1.log", env={"TUNE_GLOBAL_CHECKPOINT_S": "600"})
    search.wait_for(driver, "resume1.log", "the resumed driver's lock", lambda: search.lock_holder() == driver.pid)
    second = search.resume("second.log")
    assert second.wait(timeout=120) == 2
    assert re.fullmatch(r"gru4rec-search: error: search .* is being run by pid \d+ on .* since .*\n",
                        (search.tmp / "second.log").read_text().splitlines(keepends=True)[-1])

    # 2. The driver dies after Optuna recorded the end of a trial Tune's snapshot has as unfinished (the resumed
    # driver's first snapshot, at its first step, has its restored trials pending), and of one Tune's snapshot does
    # not know (started after it), before Tune's next snapshot. A restored trial that ends last would leave no such
    # moment before the final snapshot, so a trial's worker is killed (Tune retries the trial from its checkpoint)
    # only once a restored trial has ended.
    def ended_in_optuna() -> list[str]:
        """Tune's snapshot's status of each trial that ended in Optuna ("unknown" where it has none)."""
        tune = {t["trial_id"]: t["status"] for t in search.tune_trials()}
        return [tune.get(t.user_attrs.get("tune_trial_id"), "unknown") for t in search.optuna_trials()
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    search.wait_for(driver, "resume1.log", "a restored trial ended in Optuna but not yet in Tune's snapshot",
                    lambda: any(status in UNFINISHED for status in ended_in_optuna()))
    search.wait_for(driver, "resume1.log", "a running trial worker", lambda: bool(worker_pids()))
    os.kill(worker_pids()[0], signal.SIGKILL)
    def both_ended() -> bool:
        ended = ended_in_optuna()
        return any(status in UNFINISHED for status in ended) and "unknown" in ended
    search.wait_for(driver, "resume1.log", "a trial Tune's snapshot does not know ended in Optuna", both_ended)
    search.kill(driver)

    # 3. The driver dies in the middle of the retrains.
    driver = search.resume("resume2.log")
    retrains = search.folder / "retrain" / "xe_shared"
    def finished_retrains() -> dict[str, str]:
        """Retrain results written whole (a dot-file is one being written)."""
        if not retrains.is_dir():
            return {}
        return {p.name: p.read_text() for p in retrains.iterdir() if not p.name.startswith(".")}
    search.wait_for(driver, "resume2.log", "a finished retrain", lambda: bool(finished_retrains()), timeout=600)
    search.kill(driver)
    done_before = finished_retrains()
    assert 0 < len(done_before) < 6, "the kill came after every retrain"

    driver = search.resume("resume3.log")
    assert driver.wait(timeout=900) == 0, (search.tmp / "resume3.log").read_text()[-4000:]

    # Exactly the asked trials, in the ledger (Tune's and the kept) and in Optuna; none running; failed only as lost.
    assert re.search(r"^kept [1-9]\d* trials? that ended after Tune's last snapshot before the stop$",
                     (search.tmp / "resume2.log").read_text(), re.M)
    tune = search.ledger_trials()
    assert len(tune) == TRIALS and all(t["status"] == "TERMINATED" for t in tune)
    assert len(search.tune_trials()) < TRIALS
    trials = search.optuna_trials()
    counted = search.optuna_trials(counted=True)
    assert len(counted) == TRIALS and not any(t.state == TrialState.RUNNING for t in trials)
    assert all(t.state == TrialState.FAIL for t in trials if t.user_attrs.get("lost"))  # lost while running
    assert {t.user_attrs["tune_trial_id"] for t in counted} == {t["trial_id"] for t in tune}
    # Every epoch of every trial trained at most once more, past the checkpoint it resumed from.
    for t in tune:
        iterations = [r["training_iteration"] for r in search.results(t["dir"])]
        assert iterations and max(iterations.count(i) for i in set(iterations)) <= 2, (t["trial_id"], iterations)
    # The retrains finished before the last kill were not redone.
    assert all((retrains / name).read_text() == text for name, text in done_before.items())
    assert len([p for p in retrains.iterdir() if not p.name.startswith(".")]) == 6
    # No checkpoint is left, and the study folder stays within the printed bound.
    status = {t["dir"]: t["status"] for t in tune}
    left = {p.parent.name: status.get(p.parent.name, "unknown to Tune")
            for p in search.experiment.glob("trial_*/checkpoint_*")}
    assert not left, left
    bound = json.loads((search.folder / "search.json").read_text())["disk_bound"]
    size = sum(p.stat().st_size for p in search.experiment.rglob("*") if p.is_file())
    assert 0 < size < bound, (size, bound)
    assert "disk: checkpoints stay below" in (search.tmp / "run.log").read_text()
    table = (search.folder / "results.md").read_text()
    assert "| xe_shared |" in table and "baseline: markov" in table
    status = subprocess.run([BIN / "gru4rec-search", "status", "chaos", "--storage", search.store],
                            capture_output=True, text=True, env=ENV)
    assert re.search(rf"xe_shared\s+{TRIALS}/{TRIALS}\s+0\s", status.stdout), status.stdout
