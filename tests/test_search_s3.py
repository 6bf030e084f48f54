"""A search on object storage (a real S3 server on 127.0.0.1), through the CLI, as users run one from several
hosts: a driver killed mid-trial, resumed on a second host (its own journal cache), a second driver refused, then
resumed again on the first host with its stale cache, losing nothing; then a folder that Tune wedged by restarting
an experiment it could not restore, recovered; and a restore that cannot work, refused with nothing changed."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pyarrow.fs
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search.journal import JournalReplica
from search.ledger import read_results
from search.settings import SearchError, Store
from search.tune_ext import counted_trials, read_state, read_trials

from rsc15 import BIN, DATA, SLOW_ON_DATA, SMALL_SPACE as SPACE

pytestmark = SLOW_ON_DATA


class Hosts:
    """Commands of one search on S3, each run as if on a host of its own (its own journal cache)."""

    def __init__(self, tmp_path: Path, bucket: str, spawn):
        self.tmp, self.spawn = tmp_path, spawn
        self.storage = f"{bucket}/searches"
        self.uri = f"{self.storage}/s3search"
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)

    def env(self, host: str) -> dict:
        return {**os.environ, "XDG_CACHE_HOME": str(self.tmp / host), "OMP_NUM_THREADS": "1",
                "TUNE_GLOBAL_CHECKPOINT_S": "1"}

    def run(self, host: str, trials: int, log: str) -> subprocess.Popen:
        space = self.tmp / "space.jsonl"
        space.write_text("".join(json.dumps(e) + "\n" for e in SPACE))
        return self.spawn([BIN / "gru4rec-search", "run", "--train", DATA / "train_tr.tsv", "--valid",
                           DATA / "train_valid.tsv", "--train-full", DATA / "train_full.tsv", "--test",
                           DATA / "test.tsv",
                           "--name", "s3search", "--losses", "xe", "--modes", "shared", "--space", space,
                           "--fixed", "n_sample=128,batch_size=128", "--trials", trials, "--epochs", 2,
                           "--storage", self.storage, "--local-cpus", 2, "--max-concurrent", 2, "--no-dashboard",
                           "--quiet", "--reduction-factor", 2, "--top-k", 1, "--seeds", 1], log,
                          env=self.env(host))

    def resume(self, host: str, log: str, *extra) -> subprocess.Popen:
        return self.spawn([BIN / "gru4rec-search", "resume", "s3search", "--storage", self.storage, "--local-cpus", 2,
                           "--no-dashboard", "--quiet", *extra], log, env=self.env(host))

    def finish(self, proc: subprocess.Popen, log: str, rc: int = 0) -> str:
        assert proc.wait(timeout=600) == rc, (self.tmp / log).read_text()[-4000:]
        return (self.tmp / log).read_text()

    def tune_trials(self) -> list[dict]:
        try:
            return read_state(self.fs, f"{self.root}/trials") or []
        except (SearchError, OSError, KeyError):
            return []

    def exists(self, path: str | None) -> bool:
        return bool(path) and self.fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def counted_optuna_trials(self) -> list:
        """The study's trials but those a resume set aside as lost."""
        local = JournalReplica(Store(self.uri), self.tmp / "reader").pull()
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(local)))
        return counted_trials(optuna.load_study(study_name="s3search/xe_shared", storage=storage))

    def state_files(self) -> dict[str, bytes]:
        """Tune's saved experiment files (not the trials' folders), name -> content."""
        entries = self.fs.get_file_info(pyarrow.fs.FileSelector(f"{self.root}/trials"))
        return {e.base_name: self.fs.open_input_stream(e.path).readall() for e in entries
                if e.type == pyarrow.fs.FileType.File and not e.base_name.startswith(".")}

    def status(self, host: str) -> str:
        return subprocess.run([BIN / "gru4rec-search", "status", "s3search", "--storage", self.storage],
                              capture_output=True, text=True, env=self.env(host), timeout=120).stdout

    def check_complete(self, trials: int) -> None:
        """Exactly `trials` trials, all ended, in the ledger (Tune's, and those a resume kept) and in Optuna (lost
        asks aside), none trained twice."""
        tune = read_trials(self.fs, f"{self.root}/trials") or []
        assert len(tune) == trials and all(t["status"] == "TERMINATED" for t in tune), \
            [(t["trial_id"], t["status"], t["last_result"].get("epoch")) for t in tune]
        counted = self.counted_optuna_trials()
        assert sorted(t.user_attrs["tune_trial_id"] for t in counted) == sorted(t["trial_id"] for t in tune)
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
        for t in tune:
            epochs = [r["epoch"] for r in read_results(self.fs, f"{self.root}/trials/{t['dir']}/metrics.jsonl")]
            assert epochs and max(epochs.count(e) for e in set(epochs)) <= 2, (t["trial_id"], epochs)


def wait_for(proc, hosts: Hosts, log: str, what: str, condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the driver ended before {what}:\n" + (hosts.tmp / log).read_text()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_search_on_s3_survives_kills_and_hosts_taking_turns(tmp_path, s3, spawn):
    hosts = Hosts(tmp_path, s3, spawn)
    # Host A starts the search and is killed in the middle of a trial.
    driver = hosts.run("host-a", 3, "a1.log")
    wait_for(driver, hosts, "a1.log", "a trial mid-way", lambda: any(
        t["status"] == "RUNNING" and t["last_result"] for t in hosts.tune_trials()))
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # The checkpoint Tune's snapshot names for a trial in flight is gone (the janitor keeps the newest only):
    # the trial resumes all the same, from scratch here, where it had no other. (Unless it ended just before the
    # kill: then its end is in the journal and its checkpoints are gone already; test_search_study tests the
    # stand-ins deterministically.)
    for trial in hosts.tune_trials():
        if trial["status"] == "RUNNING" and hosts.exists(trial.get("checkpoint")):
            hosts.fs.delete_dir(trial["checkpoint"])

    # Host B (no cache of its own) resumes with a raised budget; a second driver is refused meanwhile.
    driver = hosts.resume("host-b", "b1.log", "--trials", "5")
    wait_for(driver, hosts, "b1.log", "host B's lock", lambda: f'"pid": {driver.pid}' in
             (Store(hosts.uri).read_text("driver.lock") or ""))
    second = hosts.resume("host-c", "second.log")
    assert second.wait(timeout=120) == 2
    assert re.search(r"error: search .* is being run by pid \d+", (tmp_path / "second.log").read_text())
    hosts.finish(driver, "b1.log")
    hosts.check_complete(5)

    # Host A again, with its stale journal copy (it lacks every record host B made).
    out = hosts.finish(hosts.resume("host-a", "a2.log", "--trials", "6"), "a2.log")
    assert "the local journal copy disagrees" in out or "Restoring the run" in out
    hosts.check_complete(6)
    status = hosts.status("host-c")
    assert re.search(r"xe_shared\s+6/6\s+0\s", status)
    assert re.search(r"xe_shared: predicted early stopping: epoch 1: 6 reached, \d ran to the end, rho ",
                     status), status
    assert Store(hosts.uri).list("optuna.journal.parts"), "the journal is stored in pieces"

    # A folder wedged by an earlier version: Tune restarted the experiment it could not restore and saved a
    # newer, empty state (and its searcher's files) beside the real one. The resume sets those aside.
    files = hosts.state_files()
    session = max(name[len("experiment_state-"):-len(".json")] for name in files
                  if name.startswith("experiment_state-"))
    later = "2999-01-01_00-00-00"
    empty = json.loads(files[f"experiment_state-{session}.json"])
    empty["trial_data"] = []
    store = Store(f"{hosts.uri}/trials")
    store.write(f"experiment_state-{later}.json", json.dumps(empty))
    for name in (f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"):
        store.write(name.replace(session, later), files[name])
    out = hosts.finish(hosts.resume("host-b", "b2.log", "--trials", "7"), "b2.log")
    assert f"set aside the experiment Tune restarted empty at {later}" in out
    assert sorted(store.list("set-aside")) == sorted(n.replace(session, later) for n in
                                                     (f"experiment_state-{session}.json",
                                                      f"search_gen_state-{session}.json",
                                                      f"searcher-state-{session}.pkl"))
    hosts.check_complete(7)
    # the state the last resume started from and its own: those of earlier sessions are dropped (Tune would
    # upload every one of them with each snapshot)
    assert len([n for n in hosts.state_files() if n.startswith("experiment_state-")]) == 2

    # A restore that cannot work (the Optuna journal lost from the storage and from this host) is refused in
    # one line before Tune touches the experiment, which stays as it was.
    before = hosts.state_files()
    for name in Store(hosts.uri).list("optuna.journal.parts"):
        Store(hosts.uri).delete(f"optuna.journal.parts/{name}")
    Store(hosts.uri).delete("optuna.journal")
    out = hosts.finish(hosts.resume("host-d", "d1.log", "--trials", "8"), "d1.log", rc=2)
    assert re.search(r"error: cannot resume from .*: Optuna study s3search/xe_shared lacks trials .* \(7 of 7\).*"
                     r"nothing was changed", out.splitlines()[-1]), out[-2000:]
    assert hosts.state_files() == before
