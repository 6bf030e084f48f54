"""The real search driver at full size: 6 studies x 200 trials, 16 in flight, killed and resumed 5 times.

    .venv/bin/python bench/driver_scale.py                        # local folder, then a local S3 server (hours)
    .venv/bin/python bench/driver_scale.py --storage-kind s3      # one storage kind only
    .venv/bin/python bench/driver_scale.py --quick                # 2 studies x 8 trials, 4 in flight, 1 kill

Everything is the platform's own code run through its command line (`gru4rec-search run` and `resume`, via
`python -m bench.replay`, which is search.cli.main with timing probes on the driver): Tune, the Optuna studies
and their journal, ASHA, the driver lock, finalize (real retrains of the best configs on a small generated
dataset, n_sample 128, so that they take seconds), export and status. Only the trials' training is replaced
(GRU4REC_SEARCH_TRIAL_BODY=bench.replay:replay_trial): each trial answers from the recorded learning curves of
its loss (bench/data/curves.parquet; the embedding mode does not matter to the replay) and sleeps its epochs,
scaled to --epoch-seconds on average. The studies are the losses xe, bpr-max x the modes none, separate, shared
(--studies picks a product of them), on the published spaces (spaces/), which the curves cover. The driver's
whole process group is killed with SIGKILL --kills times, at seeded random moments: kill i once a seeded random
count of trials in the i-th of --kills equal parts of the search has ended and the driver has started a trial,
after a further seeded delay of up to two epochs; each time the search goes on with `gru4rec-search resume`
(on S3 retried until the killed driver's lease has gone stale).

Figures, and how each is measured:
- driver RSS: VmRSS of the driver process (/proc), when 1/12, 1/2 and all of the trials have ended (100, 600
  and 1,200 at full size), with its peak so far in that driver's run (sampled every 0.25 s).
- Tune experiment snapshot: seconds of each snapshot that Tune's experiment checkpoint manager takes (writing
  the experiment state, the searchers' state and the callbacks' state, and starting the upload), timed by a
  probe around `_ExperimentCheckpointManager.sync_up_experiment_state` in the driver; median and max of the
  last 10 before each point, with the size of the experiment state file then; and the seconds of the upload of
  the experiment folder that follows each snapshot in the background (a probe around Ray's
  `_upload_to_fs_path`), during which the storage holds an older snapshot, or parts of two.
- trial start: from the moment Tune asks the searcher for a trial (probe around
  `SearchGenerator.create_trial_if_possible`) to the trial's first line running in its worker (logged by the
  replayed trial); median and max of the last 10 trials created before each point, and the searcher's share.
- bytes written to storage: on S3, the bodies of the PUT and POST requests the S3 server received (counted
  by a WSGI wrapper around moto's server); on a local folder, the bytes the kernel counted as written to disk
  (write_bytes of /proc/PID/io, in 4 kB pages dirtied) by every process of the driver's session, sampled every
  second (the driver itself every 0.25 s: it writes the exports last), less the bench's own logs; Ray's temporary
  folder and Python's (TMPDIR) are on tmpfs, so the search folder is all that reaches the disk. Writes in a
  process's last moments before it ends (up to a second) are missed.
- journal bytes: the size of the Optuna journal the platform reads at the end (optuna.journal, or on S3 this
  host's replica of it).
- status: seconds of `gru4rec-search status` at the end. resume: per resumed driver, seconds from the end of
  its data loading (a probe on SearchData.load) to its searcher's first request for a new trial (Tune restored
  and scheduling trials), to the first trial running again and to the first new trial (one created by that
  driver) running; "at the end" is the last resume.
- check: every study has exactly --trials ended trials in its ledger (Tune's state and the trials a resume kept)
  and in its Optuna study, with one Optuna trial per trial (those set aside aside) and none running; every trial's metrics file has each of its
  epochs once, in order; no trial was run from epoch 1 twice (a trial starting without a checkpoint while its
  metrics file already holds epochs, found by the replayed trial when it reads that file) and none ran again
  after its end. Trials a kill caught inside their first epoch, before they recorded anything, start again
  from epoch 1 by design: they are counted, not failed.

Results go to a JSON file after every driver run and every storage kind; a rerun with the same --out
continues: finished kinds are skipped, a local search goes on from its folder (a driver left running by an
interrupted bench is killed first and the search resumed), an S3 search starts again (the S3 server's
objects lived in the interrupted bench's memory). Prints one set of Markdown tables per storage kind. A driver
that exits with an error (or a search without progress for 10 minutes) ends its kind there: the tables say why,
an S3 search folder is copied to WORK/s3-failed/ for a look, and the bench exits with status 1 at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
# Python put this script's folder first on sys.path: its search.py would shadow the search package.
sys.path = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
from bench.replay import EPOCH_SECONDS_VARIABLE, LOG_VARIABLE  # noqa: E402
from bench.scale import show, significant, status_bytes, write_results  # noqa: E402
from search.trainable import TRIAL_BODY_VARIABLE  # noqa: E402

BIN = Path(sys.executable).parent
LOSSES, MODES = ("xe", "bpr-max"), ("none", "separate", "shared")
EPOCHS = 10  # the recorded curves' epochs
N_SAMPLE = 128  # fixed for the retrains' speed on the small dataset (the replayed trials ignore it)
POLL_S, IO_POLL_S = 0.25, 1.0
RECENT = 10  # snapshots and trial starts summarised at each point
LEASE_RETRY_S = 10.0
BUCKET = "driver-scale"


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


class SearchFailed(BenchError):
    """The search under test failed (a driver exited with an error, or stopped making progress)."""


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures; a results file holds the runs of one set of settings."""

    trials: int = 200
    studies: int = 6
    concurrency: int = 16
    kills: int = 5
    epoch_seconds: float = 4.0
    seed: int = 0
    top_k: int = 3
    seeds: int = 3
    events: int = 5000

    @property
    def total(self) -> int:
        return self.trials * self.studies

    def losses_modes(self) -> tuple[list[str], list[str]]:
        """The --losses and --modes whose product is --studies studies (both losses when the count is even)."""
        losses = list(LOSSES) if self.studies % 2 == 0 else list(LOSSES[:1])
        modes = list(MODES[:self.studies // len(losses)])
        if len(losses) * len(modes) != self.studies:
            raise BenchError(f"--studies {self.studies}: choose 1, 2, 3, 4 or 6 (losses x modes)")
        return losses, modes

    def milestones(self) -> list[int]:
        """Ended-trial counts at which the driver is measured: 1/12, 1/2 and all of the trials."""
        return sorted({max(1, math.ceil(self.total / 12)), max(1, math.ceil(self.total / 2)), self.total})

    def kill_plan(self) -> list[tuple[int, float]]:
        """(ended trials, further delay in seconds) of each kill: one at a random point of each of --kills
        equal parts of the search (between 5% and 95% of its trials), seeded."""
        rng = random.Random(self.seed)
        return [(max(1, int(self.total * (0.05 + 0.9 * (i + rng.random()) / self.kills))),
                 rng.uniform(0, 2 * self.epoch_seconds)) for i in range(self.kills)]

    def cpus(self) -> tuple[int, float]:
        """--local-cpus and --cpus-per-trial: a quarter CPU per trial, so that --concurrency trials fit."""
        local = max(1, math.ceil(self.concurrency / 4))
        return local, math.floor(10_000 * local / self.concurrency) / 10_000


QUICK = BenchSettings(trials=8, studies=2, concurrency=4, kills=1, epoch_seconds=0.3, top_k=1, seeds=1, events=2500)


@dataclass
class Paths:
    """The bench's folders: data, the local storage root, the event logs and driver logs (on disk, kept for a
    rerun), and a tmpfs folder for Ray's and Python's temporary files."""

    work: Path
    scratch: Path

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def store(self) -> Path:
        return self.work / "store"

    def events(self, kind: str) -> Path:
        return self.work / f"events-{kind}.jsonl"

    def driver_log(self, kind: str, number: int) -> Path:
        return self.work / "logs" / f"{kind}-{number}.log"


# ---- the event log of the driver's probes and the replayed trials -------------------------------------

@dataclass
class Progress:
    """What the events say of a search so far (over every driver that ran it)."""

    ended: dict[str, float] = field(default_factory=dict)  # trial -> when it ended
    created: dict[str, dict] = field(default_factory=dict)  # trial -> its "created" event
    begins: list[dict] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    uploads: list[dict] = field(default_factory=list)
    loaded: dict[int, float] = field(default_factory=dict)  # driver pid -> when its data was loaded
    offset: int = 0  # bytes of the log read so far

    def read(self, path: Path) -> list[dict]:
        """Take in the complete lines added to the log since the last read; returns their events."""
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[:text.rfind(b"\n") + 1]
        self.offset += len(complete)
        events = [json.loads(line) for line in complete.splitlines() if line.strip()]
        for event in events:
            self.take(event)
        return events

    def take(self, event: dict) -> None:
        """Add one event to what is known."""
        kind = event["event"]
        if kind == "ended":
            self.ended.setdefault(event["trial"], event["t"])
        elif kind == "created":
            self.created[event["trial"]] = event
        elif kind == "begin":
            self.begins.append(event)
        elif kind == "snapshot":
            self.snapshots.append(event)
        elif kind == "upload":
            self.uploads.append(event)
        elif kind == "loaded":
            self.loaded[event["pid"]] = event["t"]

    def trial_starts(self, driver: int, before: float) -> list[tuple[float, float]]:
        """(seconds from asking the searcher to the trial running, seconds of the suggestion) of the last RECENT
        trials the driver created before `before` that have started."""
        first = {}
        for begin in self.begins:
            first.setdefault(begin["trial"], begin["t"])
        made = [e for e in self.created.values() if e["pid"] == driver and e["t"] <= before and e["trial"] in first]
        return [(first[e["trial"]] - e["asked"], e["seconds"]) for e in made[-RECENT:]]

    def recent(self, events: list[dict], driver: int) -> list[float]:
        """Seconds of the driver's last RECENT snapshots or uploads."""
        return [e["seconds"] for e in events if e["pid"] == driver][-RECENT:]

    def first_asked(self, driver: int, after: float) -> float | None:
        """When the driver's searcher was first asked for a new trial after `after` (Tune restored and scheduling)."""
        return min((e["asked"] for e in self.created.values() if e["pid"] == driver and e["asked"] > after),
                   default=None)

    def first_begin(self, after: float, new_of: int | None = None) -> float | None:
        """When the first trial began after `after` (only trials created by driver `new_of`, if given)."""
        times = [b["t"] for b in self.begins if b["t"] > after
                 and (new_of is None or self.created.get(b["trial"], {}).get("pid") == new_of)]
        return min(times, default=None)


# ---- storage: a local folder, or a local S3 server that counts what it is sent ------------------------

class CountingS3Server:
    """moto's S3 server on 127.0.0.1 behind a WSGI wrapper that counts requests and body bytes by method."""

    def __init__(self) -> None:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        app = DomainDispatcherApplication(create_backend_app)
        server = self.server

        def serve() -> None:  # ThreadedMotoServer._server_entry, with the counting wrapper around the app
            server._server = make_server("127.0.0.1", 0, self.counted(app), True, request_handler=MotoRequestHandler)
            server._server_ready_event.set()
            server._server.serve_forever()

        server._server_entry = serve

    def counted(self, app: Any) -> Any:
        """The WSGI app wrapped so that every request's method and body size are counted."""
        def counting(environ: dict, start_response: Any) -> Any:
            method = environ["REQUEST_METHOD"]
            size = int(environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get("CONTENT_LENGTH") or 0)
            with self._lock:
                self.requests[method] += 1
                self.bytes[method] += size
            return app(environ, start_response)
        return counting

    def written(self) -> int:
        """Body bytes of the requests that write (PUT, POST)."""
        with self._lock:
            return self.bytes["PUT"] + self.bytes["POST"]


@dataclass
class Storage:
    """Where a search lives, the environment that reaches it, and how its written bytes are counted."""

    kind: str
    root: str
    env: dict[str, str]
    s3: CountingS3Server | None = None


@contextmanager
def storage_for(kind: str, paths: Paths, prefix: str) -> Iterator[Storage]:
    """A local folder, or a fresh S3 server with an empty bucket (stopped afterwards)."""
    if kind == "local":
        yield Storage(kind, str(paths.store), {})
        return
    import boto3
    counting = CountingS3Server()
    counting.server.start()
    host, port = counting.server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # this process reads the search's files too
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield Storage(kind, f"s3://{BUCKET}/{prefix}", env, counting)
    finally:
        counting.server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem and path of a local path or URI."""
    import pyarrow.fs
    return pyarrow.fs.FileSystem.from_uri(uri)


def tree_bytes(uri: str) -> int:
    """Bytes of every file under a storage path."""
    import pyarrow.fs
    fs, root = filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sum(i.size for i in infos if i.type == pyarrow.fs.FileType.File)


def state_bytes(uri: str) -> int | None:
    """Size of the newest experiment state file of the Tune experiment of the search folder `uri`."""
    from search.tune_ext import latest_state_file
    fs, root = filesystem(f"{uri}/trials")
    path = latest_state_file(fs, root)
    return fs.get_file_info(path).size if path else None


def keep_copy(uri: str, folder: Path) -> None:
    """Copy a search folder from the storage to a local folder (replacing it)."""
    import pyarrow.fs
    fs, root = filesystem(uri)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pyarrow.fs.copy_files(root, str(folder), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())


def ledger_trials(uri: str) -> list[dict]:
    """The trials of the search folder `uri` as its ledger has them: Tune's saved experiment state and the trials
    a resume kept (ended after Tune's last snapshot); empty before the first snapshot."""
    from search.tune_ext import read_trials
    fs, root = filesystem(f"{uri}/trials")
    return read_trials(fs, root) or []


# ---- processes --------------------------------------------------------------------------------------

def rss(pid: int) -> int | None:
    """Resident bytes of a process, None once it has ended."""
    try:
        return status_bytes("VmRSS", pid)
    except (OSError, KeyError):
        return None


def session_write_bytes(sid: int, only: int | None = None) -> dict[tuple[int, str], int]:
    """write_bytes of /proc/PID/io of every process of a session (or of process `only`), by (pid, start time)."""
    found = {}
    for pid in [str(only)] if only else (e.name for e in os.scandir("/proc") if e.name.isdigit()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:
                continue
            io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            found[(int(pid), fields[19])] = int(io["write_bytes"])
        except (OSError, ValueError, IndexError, KeyError):
            continue
    return found


def ours(pid: int, search: str) -> bool:
    """Whether a process is a driver of this bench's search (its pid may since have been reused)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"bench.replay" in command and search.encode() in command


def size(path: Path) -> int:
    """A local file's bytes, 0 if it does not exist."""
    return path.stat().st_size if path.exists() else 0


def kill_group(pid: int) -> None:
    """SIGKILL a process group this bench started (the driver's, led by its pid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- one storage kind: the search, its driver runs, and the end -------------------------------------

@dataclass
class Phase:
    """One search on one storage kind, as written to the results file."""

    kind: str
    name: str
    storage: str
    sessions: list[dict] = field(default_factory=list)
    milestones: list[dict] = field(default_factory=list)
    end: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)
    failure: str = ""  # why the search failed, if it did (the phase then ends there)
    done: bool = False

    @property
    def uri(self) -> str:
        """The search folder."""
        return f"{self.storage}/{self.name}"

    @property
    def kills(self) -> int:
        """Driver runs this bench has killed so far."""
        return sum(s["how"] == "killed" for s in self.sessions)

    @property
    def searched(self) -> bool:
        """Whether a driver ran the search to its end (all trials, finalize, export)."""
        return any(s["how"] == "finished" for s in self.sessions)


class Bench:
    """Runs the phases of one results file and keeps it up to date."""

    def __init__(self, settings: BenchSettings, paths: Paths, out: Path):
        self.settings, self.paths, self.out = settings, paths, out
        self.results = self.load()

    def load(self) -> dict:
        """The results file's contents (of these settings), or an empty one."""
        if not self.out.is_file():
            return {"settings": dataclasses.asdict(self.settings), "phases": {}}
        results = json.loads(self.out.read_text())
        if results["settings"] != dataclasses.asdict(self.settings):
            raise BenchError(f"{self.out} holds a run of other settings ({results['settings']}); choose another --out")
        return results

    def save(self, phase: Phase) -> None:
        """Write the phase into the results file (atomically)."""
        self.results["phases"][phase.kind] = dataclasses.asdict(phase)
        write_results(self.out, self.results)

    def phase(self, kind: str) -> Phase:
        """The kind's phase to continue, or a new one (an unfinished S3 phase starts again)."""
        saved = self.results["phases"].get(kind)
        if saved and (saved["done"] or kind == "local"):
            return Phase(**saved)
        if kind == "local" and self.paths.store.exists():
            shutil.rmtree(self.paths.store)
        self.paths.events(kind).unlink(missing_ok=True)
        return Phase(kind=kind, name=f"scale-{kind}", storage="")

    def run(self, kind: str) -> Phase:
        """Run (or continue) the search on one storage kind to its end, then take the end figures and check it."""
        phase = self.phase(kind)
        if phase.done:
            return phase
        with storage_for(kind, self.paths, uuid.uuid4().hex[:8]) as storage:
            phase.storage = storage.root
            progress = Progress()
            progress.read(self.paths.events(kind))
            stop_left_driver(phase)
            phase.failure = ""
            try:
                while not phase.searched:
                    DriverRun(self, phase, storage, progress).run()
                    self.save(phase)
            except SearchFailed as e:
                phase.failure = str(e)
                if storage.s3 is not None:  # the server's objects go with this process: keep them for a look
                    keep_copy(phase.uri, self.paths.work / f"{kind}-failed")
                self.save(phase)
                return phase
            phase.end = end_figures(phase, storage, self.paths)
            phase.check = verify(phase, self.settings, progress)
            phase.done = True
            self.save(phase)
        return phase

    def driver_env(self, kind: str, storage: Storage) -> dict[str, str]:
        """The driver's environment: the replayed trials, the probes' log, temporary files on tmpfs, the S3
        server (and this bench's cache folder, set in main, for the S3 journal replica)."""
        python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, **storage.env, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1",
                TRIAL_BODY_VARIABLE: "bench.replay:replay_trial", LOG_VARIABLE: str(self.paths.events(kind)),
                EPOCH_SECONDS_VARIABLE: str(self.settings.epoch_seconds), "TMPDIR": str(self.paths.scratch)}

    def command(self, phase: Phase) -> list[str]:
        """`gru4rec-search run ...` for a new search, `resume` for one that has started."""
        s, (local_cpus, cpus) = self.settings, self.settings.cpus()
        ray = ["--local-cpus", str(local_cpus), "--no-dashboard", "--quiet"]
        if phase.sessions:
            return [sys.executable, "-m", "bench.replay", "resume", phase.name, "--storage", phase.storage, *ray]
        losses, modes = s.losses_modes()
        splits = {"train": "train_tr", "valid": "train_valid", "train-full": "train_full", "test": "test"}
        return [sys.executable, "-m", "bench.replay", "run", "--name", phase.name, "--storage", phase.storage,
                *(a for flag, split in splits.items()
                  for a in (f"--{flag}", str(self.paths.data / f"{split}.parquet"))),
                "--losses", ",".join(losses), "--modes", ",".join(modes), "--trials", str(s.trials),
                "--epochs", str(EPOCHS), "--fixed", f"n_sample={N_SAMPLE}", "--seed", str(s.seed),
                "--max-concurrent", str(s.concurrency), "--cpus-per-trial", str(cpus), "--top-k", str(s.top_k),
                "--seeds", str(s.seeds), *ray]


def stop_left_driver(phase: Phase) -> None:
    """Kill the driver of a session an interrupted bench left running, and mark that session."""
    if phase.sessions and phase.sessions[-1]["how"] == "running":
        last = phase.sessions[-1]
        if ours(last["pid"], phase.name):
            kill_group(last["pid"])
        last["how"] = "bench interrupted"


class DriverRun:
    """One run of the driver (`run` or `resume`): started, watched until it ends or is killed, recorded."""

    def __init__(self, bench: Bench, phase: Phase, storage: Storage, progress: Progress):
        self.bench, self.phase, self.storage, self.progress = bench, phase, storage, progress
        self.settings, self.paths = bench.settings, bench.paths
        self.plan = bench.settings.kill_plan()
        self.record: dict[str, Any] = {}
        self.peak = 0
        self.io: dict[tuple[int, str], int] = {}
        self.kill_at: float | None = None
        self.began = False

    def run(self) -> None:
        """Start the driver, follow it to its end or kill, and record it in the phase."""
        proc, started, waited = self.start()
        self.record.update(how="running", pid=proc.pid, started=started, ended_before=len(self.progress.ended),
                           lease_wait_s=waited, written_before=self.written_so_far())
        self.phase.sessions.append(self.record)
        self.bench.save(self.phase)
        try:
            how = self.watch(proc)
        finally:
            kill_group(proc.pid)
            proc.wait()
        self.finish(how, proc.returncode)

    def start(self) -> tuple[subprocess.Popen, float, float]:
        """Start the driver in its own session, retried while the killed driver's lease (object storage) is live;
        returns it, when it started, and the seconds since the first try."""
        number, first = len(self.phase.sessions), None
        while True:
            log = self.paths.driver_log(self.phase.kind, number)
            log.parent.mkdir(parents=True, exist_ok=True)
            self.log_start, self.events_start = size(log), size(self.paths.events(self.phase.kind))
            started = time.time()
            first = first or started
            with open(log, "ab") as out:
                proc = subprocess.Popen(self.bench.command(self.phase), stdout=out, stderr=subprocess.STDOUT,
                                        cwd=self.paths.work, env=self.bench.driver_env(self.phase.kind, self.storage),
                                        start_new_session=True)
            self.log = log
            if not self.refused(proc):
                return proc, started, started - first
            time.sleep(LEASE_RETRY_S)

    def refused(self, proc: subprocess.Popen) -> bool:
        """Whether the driver gave up at once because the killed driver's lease on object storage is still live
        (a driver that has loaded its data holds the lock or lease)."""
        while proc.poll() is None:
            self.progress.read(self.paths.events(self.phase.kind))
            if proc.pid in self.progress.loaded:
                return False
            time.sleep(POLL_S)
        return proc.returncode == 2 and "is being run by" in self.log.read_text(errors="replace")[-2000:]

    def watch(self, proc: subprocess.Popen) -> str:
        """Follow the driver until it exits ("finished" or "failed"), this bench kills it ("killed"), or the
        search makes no progress for a long while ("stalled": the bench then kills it)."""
        last_event, last_io = time.time(), 0.0
        stall = max(600.0, 100 * self.settings.epoch_seconds)
        while True:
            if self.progress.read(self.paths.events(self.phase.kind)):
                last_event = time.time()
            self.peak = max(self.peak, rss(proc.pid) or 0)
            if self.phase.kind == "local":
                last_io = self.sample_writes(proc.pid, last_io)
            self.follow_start(proc.pid)
            self.take_milestones(proc.pid)
            if proc.poll() is not None:
                return "finished" if proc.returncode == 0 else "failed"
            if self.kill_due(proc.pid):
                return "killed"
            if len(self.progress.ended) < self.settings.total and time.time() - last_event > stall:
                return "stalled"
            time.sleep(POLL_S)

    def sample_writes(self, pid: int, last: float) -> float:
        """Take the disk writes of the driver (every tick: it writes the exports last) and, every IO_POLL_S, of
        every process of its session; returns when the session was last scanned."""
        if time.time() - last >= IO_POLL_S:
            self.io.update(session_write_bytes(pid))
            return time.time()
        self.io.update(session_write_bytes(pid, only=pid))
        return last

    def follow_start(self, pid: int) -> None:
        """Once a resumed driver runs trials again, count the trials Tune's restored state has as ended
        (an end recorded by Optuna just before a kill reaches Tune's state only at the resume)."""
        if self.began or not any(b["t"] > self.record["started"] for b in self.progress.begins):
            return
        self.began = True
        if self.phase.sessions[:-1]:
            for trial in ledger_trials(self.phase.uri):
                if trial["status"] in ("TERMINATED", "ERROR"):
                    self.progress.ended.setdefault(trial["trial_id"], time.time())

    def take_milestones(self, pid: int) -> None:
        """Measure the driver at each ended-trial count it reaches."""
        done = {m["target"] for m in self.phase.milestones}
        for target in self.settings.milestones():
            if target in done or len(self.progress.ended) < target:
                continue
            now = time.time()
            starts = self.progress.trial_starts(pid, now)
            resident = rss(pid)
            self.peak = max(self.peak, resident or 0)  # read now, it can top the last sampled peak
            self.phase.milestones.append({
                "target": target, "ended": len(self.progress.ended), "session": len(self.phase.sessions) - 1,
                "rss_bytes": resident, "peak_rss_bytes": self.peak,
                "snapshot_s": self.progress.recent(self.progress.snapshots, pid),
                "upload_s": self.progress.recent(self.progress.uploads, pid),
                "trial_start_s": [s for s, _ in starts], "suggest_s": [s for _, s in starts],
                "state_bytes": state_bytes(self.phase.uri), "written_bytes": self.written_so_far()})
            self.bench.save(self.phase)

    def kill_due(self, pid: int) -> bool:
        """Kill the driver's process group at the next planned moment; True once it is killed."""
        if self.phase.kills >= len(self.plan) or not self.began:
            return False
        point, delay = self.plan[self.phase.kills]
        if self.kill_at is None and len(self.progress.ended) >= point:
            self.kill_at = time.time() + delay
        if self.kill_at is None or time.time() < self.kill_at:
            return False
        kill_group(pid)
        return True

    def written_so_far(self) -> int:
        """Bytes written to the storage so far: S3 PUT/POST bodies, or this and the earlier drivers' disk writes."""
        if self.storage.s3 is not None:
            return self.storage.s3.written()
        earlier = sum(s.get("written_bytes", 0) for s in self.phase.sessions if s is not self.record)
        return earlier + self.local_written()

    def local_written(self) -> int:
        """This driver's processes' disk writes, less what they wrote to this bench's own logs."""
        own = size(self.log) - self.log_start + size(self.paths.events(self.phase.kind)) - self.events_start
        return max(0, sum(self.io.values()) - own)

    def finish(self, how: str, returncode: int) -> None:
        """Record how the driver ended and what it took."""
        self.progress.read(self.paths.events(self.phase.kind))
        pid, started = self.record["pid"], self.record["started"]
        loaded = self.progress.loaded.get(pid)
        first = self.progress.first_begin(loaded) if loaded else None
        new = self.progress.first_begin(loaded, new_of=pid) if loaded else None
        asked = self.progress.first_asked(pid, loaded) if loaded else None
        self.record.update(
            how=how, stopped=time.time(), ended_after=len(self.progress.ended), peak_rss_bytes=self.peak,
            to_loaded_s=loaded - started if loaded else None, loaded_to_first_trial_s=first - loaded if first else None,
            loaded_to_new_trial_s=new - loaded if new else None, loaded_to_asked_s=asked - loaded if asked else None,
            written_bytes=(self.written_so_far() - self.record["written_before"] if self.storage.s3
                           else self.local_written()))
        if how in ("failed", "stalled"):
            self.bench.save(self.phase)
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
            raise SearchFailed(f"driver {len(self.phase.sessions) - 1} {how} (exit status {returncode}): "
                               f"{' '.join(tail)} (log: {self.log})")


def end_figures(phase: Phase, storage: Storage, paths: Paths) -> dict:
    """status seconds, the journal's and the folder's bytes, and the bytes written, once the search is over."""
    env = {**os.environ, **storage.env}
    start = time.perf_counter()
    status = subprocess.run([str(BIN / "gru4rec-search"), "status", phase.name, "--storage", phase.storage],
                            capture_output=True, text=True, env=env, cwd=paths.work)
    status_s = time.perf_counter() - start
    if status.returncode != 0:
        raise BenchError(f"gru4rec-search status failed: {status.stderr[-2000:]}")
    figures = {"status_s": status_s, "status": status.stdout, "folder_bytes": tree_bytes(phase.uri),
               "journal_bytes": journal_bytes(phase),
               "written_bytes": sum(s.get("written_bytes", 0) for s in phase.sessions)}
    if storage.s3 is not None:
        figures["requests"] = dict(storage.s3.requests)
        figures["request_bytes"] = dict(storage.s3.bytes)
    return figures


def journal_bytes(phase: Phase) -> int:
    """Size of the Optuna journal the platform reads (on S3: this host's replica, brought up to date)."""
    from search.settings import Store
    from search.study import journal_path
    return Path(journal_path(Store(phase.uri))).stat().st_size


def verify(phase: Phase, settings: BenchSettings, progress: Progress) -> dict:
    """The end check: exact ended trials per study in Tune and Optuna, metrics files in order, no trial run from
    epoch 1 twice or run again after its end."""
    import optuna
    from search.cli import load_settings
    from search.ledger import METRICS_FILE, read_results
    from search.study import optuna_storage
    from search.tune_ext import FINISHED, STUDY_KEY, counted_trials, read_state

    search, store = load_settings(phase.name, phase.storage)
    storage = optuna_storage(search, store)
    trials = ledger_trials(phase.uri)
    fs, root = filesystem(f"{phase.uri}/trials")
    in_tune = {t["trial_id"] for t in read_state(fs, root) or []}
    studies = {}
    for plan in search.plans():
        mine = [t for t in trials if t["config"].get(STUDY_KEY) == plan.name]
        study = optuna.load_study(study_name=search.optuna_study_name(plan), storage=storage)
        everything = study.get_trials(deepcopy=False)
        counted = counted_trials(study)
        ids = [t.user_attrs.get("tune_trial_id") for t in counted]
        epochs = [[r["epoch"] for r in read_results(fs, f"{root}/{t['dir']}/{METRICS_FILE}")] for t in mine]
        studies[plan.name] = {
            "ended": sum(t["status"] in ("TERMINATED", "ERROR") for t in mine),
            "unfinished": sum(t["status"] not in ("TERMINATED", "ERROR") for t in mine),
            "kept": sum(t["trial_id"] not in in_tune for t in mine),
            "optuna_trials": len(counted), "optuna_unfinished": sum(t.state not in FINISHED for t in counted),
            "optuna_lost": len(everything) - len(counted),
            "optuna_matches_ledger": sorted(ids) == sorted(t["trial_id"] for t in mine),
            "metrics_in_order": sum(e == list(range(1, len(e) + 1)) and bool(e) for e in epochs)}
    reruns = rerun_counts(progress)
    exact = all(s["ended"] == s["optuna_trials"] == s["metrics_in_order"] == settings.trials
                and not s["unfinished"] and not s["optuna_unfinished"] and s["optuna_matches_ledger"]
                for s in studies.values())
    return {"studies": studies, **reruns,
            "passed": exact and not reruns["run_from_epoch_1_twice"] and not reruns["run_after_end"]}


def rerun_counts(progress: Progress) -> dict:
    """From the trials' starts: trials run from epoch 1 again after recording epochs, trials a kill caught in
    their first epoch (started again from it), trials started after their end, resumes from a checkpoint."""
    fresh = defaultdict(int)
    twice, after_end, resumed, redone = set(), set(), 0, 0
    for begin in progress.begins:
        trial = begin["trial"]
        redone += begin["redone"]
        if begin["epoch"] == 0:
            fresh[trial] += 1
            if begin["redone"]:
                twice.add(trial)
        else:
            resumed += 1
        if trial in progress.ended and begin["t"] > progress.ended[trial]:
            after_end.add(trial)
    caught = {t for t, n in fresh.items() if n > 1} - twice
    return {"run_from_epoch_1_twice": sorted(twice), "restarted_in_first_epoch": sorted(caught),
            "run_after_end": sorted(after_end), "resumed_from_checkpoint": resumed, "epochs_run_again": redone}


# ---- tables ---------------------------------------------------------------------------------------

KIND_TITLES = {"local": "local folder", "s3": "S3 (moto's server on 127.0.0.1, started by the bench)"}


def spread(values: list[float]) -> str:
    """'median / max' of some seconds, or '-'."""
    if not values:
        return "-"
    return f"{significant(statistics.median(values))} / {significant(max(values))}"


def maybe(value: float | None, unit: str) -> str:
    """A figure with its unit, or '-' where there is none."""
    return "-" if value is None else show(value, unit)


def session_label(index: int) -> str:
    """A driver run's name: the first is `run`, the others resumes."""
    return "run" if index == 0 else f"resume {index}"


def milestone_table(phase: dict) -> str:
    """The driver at each ended-trial point: memory, snapshot and trial-start seconds, bytes written."""
    lines = ["| trials ended | driver | driver RSS | its peak so far | Tune snapshot s (median / max of last 10) | "
             "its upload s | experiment state | trial start s (median / max of last 10) | of which the searcher's "
             "suggestion | written to storage so far |", "|" + "---|" * 10]
    for m in phase["milestones"]:
        lines.append(f"| {m['ended']:,} | {session_label(m['session'])} | {maybe(m['rss_bytes'], 'bytes')} | "
                     f"{show(m['peak_rss_bytes'], 'bytes')} | {spread(m['snapshot_s'])} | {spread(m['upload_s'])} | "
                     f"{maybe(m['state_bytes'], 'bytes')} | {spread(m['trial_start_s'])} | {spread(m['suggest_s'])} | "
                     f"{show(m['written_bytes'], 'bytes')} |")
    return "\n".join(lines)


def session_table(phase: dict) -> str:
    """One line per driver run: how it began and ended, its resume times, memory and bytes written."""
    lines = ["| driver | trials ended at its start / end | how it ended | waited for the lease | "
             "command to data loaded | data loaded to first new trial asked | to first trial running | "
             "to first new trial running | peak RSS | written to storage |",
             "|" + "---|" * 10]
    for i, s in enumerate(phase["sessions"]):
        lines.append(f"| {session_label(i)} | {s['ended_before']:,} / {s.get('ended_after', 0):,} | "
                     f"{s['how']} | {maybe(s['lease_wait_s'] or None, 's')} | {maybe(s.get('to_loaded_s'), 's')} | "
                     f"{maybe(s.get('loaded_to_asked_s'), 's')} | {maybe(s.get('loaded_to_first_trial_s'), 's')} | "
                     f"{maybe(s.get('loaded_to_new_trial_s'), 's')} | {show(s.get('peak_rss_bytes', 0), 'bytes')} | {show(s.get('written_bytes', 0), 'bytes')} |")
    return "\n".join(lines)


def end_table(phase: dict, settings: BenchSettings) -> str:
    """The end of the search: the check, the journal's and the folder's bytes, bytes written, status seconds."""
    end, check = phase["end"], phase["check"]
    resumes = [s for s in phase["sessions"][1:] if s.get("loaded_to_new_trial_s") is not None]
    studies = [{"ended": s.get("tune_ended"), "unfinished": s.get("tune_unfinished"),  # results before trials were kept
                "optuna_matches_ledger": s.get("optuna_matches_tune"), "kept": 0, **s} for s in check["studies"].values()]
    exact = sum(s["ended"] == s["optuna_trials"] == settings.trials and s["optuna_matches_ledger"]
                and not s["unfinished"] for s in studies)
    how = "PUT and POST bodies the S3 server received" if phase["kind"] == "s3" else \
        "kernel-counted disk writes (4 kB pages) of the driver's processes"
    rows = [
        (f"studies with exactly {settings.trials} ended trials in the ledger and Optuna, one Optuna trial per trial",
         f"{exact} of {len(studies)}"),
        ("metrics files with every epoch once, in order",
         f"{sum(s['metrics_in_order'] for s in studies):,} of {settings.total:,}"),
        ("trials run from epoch 1 twice", str(len(check["run_from_epoch_1_twice"]))),
        ("trials run again after their end", str(len(check["run_after_end"]))),
        ("trials a kill caught in their first epoch, started again from it",
         str(len(check["restarted_in_first_epoch"]))),
        ("trials ended after the last snapshot before a kill (kept)", str(sum(s["kept"] for s in studies))),
        ("trials running, asked after the last snapshot before a kill (set aside, asked again)",
         str(sum(s["optuna_lost"] for s in studies))),
        ("trials resumed from a checkpoint / recorded epochs run again", f"{check['resumed_from_checkpoint']} / "
                                                                           f"{check['epochs_run_again']}"),
        ("optuna.journal at the end", show(end["journal_bytes"], "bytes")),
        (f"written to storage ({how})", show(end["written_bytes"], "bytes")),
        ("search folder at the end", show(end["folder_bytes"], "bytes")),
        ("`gru4rec-search status` at the end", show(end["status_s"], "s")),
        ("last resume: data loaded to first new trial running",
         show(resumes[-1]["loaded_to_new_trial_s"], "s") if resumes else "-"),
        ("check", "passed" if check["passed"] else "FAILED")]
    if "requests" in end:
        rows.insert(10, ("S3 requests by method", ", ".join(f"{k} {v:,}" for k, v in sorted(end["requests"].items()))))
    return "\n".join(["| figure | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def report(phase: dict, settings: BenchSettings) -> str:
    """Title, settings and the three tables of one storage kind."""
    local_cpus, cpus = settings.cpus()
    kills = ", ".join(f"{point:,} ended + {delay:.1f} s" for point, delay in settings.kill_plan()) or "none"
    return "\n".join([
        f"### {KIND_TITLES[phase['kind']]}: {settings.studies} studies x {settings.trials} trials, "
        f"{settings.concurrency} in flight", "",
        f"Storage {phase['storage']}/{phase['name']}. Epochs replayed from the recorded curves, "
        f"{settings.epoch_seconds:g} s on average; {local_cpus} Ray CPUs, {cpus:g} per trial; driver killed at: "
        f"{kills}. MB = 10^6 bytes.", "",
        milestone_table(phase), "", session_table(phase), "",
        f"**The search failed**: {phase['failure']}" if phase["failure"] else end_table(phase, settings), ""])


# ---- main ---------------------------------------------------------------------------------------

def ensure_data(paths: Paths, events: int, seed: int) -> None:
    """The four splits of a small generated dataset (`gru4rec generate`), made once per work folder."""
    if (paths.data / "test.parquet").is_file():
        return
    subprocess.run([str(BIN / "gru4rec"), "generate", str(paths.data), "--events", str(events), "--seed", str(seed),
                    "--format", "parquet"], check=True, stdout=subprocess.DEVNULL)


def arguments() -> argparse.Namespace:
    """The command line; --quick sets its own settings and the local folder only."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = BenchSettings()
    p.add_argument("--quick", action="store_true", help="2 studies x 8 trials, 4 in flight, 1 kill, epochs of 0.3 s, "
                                                        "local folder only (what CI runs)")
    p.add_argument("--trials", type=int, default=d.trials, help="trials per study (default: %(default)s)")
    p.add_argument("--studies", type=int, default=d.studies, help="1, 2, 3, 4 or 6 (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="trials in flight (default: %(default)s)")
    p.add_argument("--kills", type=int, default=d.kills, help="SIGKILLs of the driver (default: %(default)s)")
    p.add_argument("--epoch-seconds", type=float, default=d.epoch_seconds,
                   help="mean seconds of a replayed epoch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the kills, the search and the data")
    p.add_argument("--storage-kind", default="local,s3",
                   help="local, s3 or both, comma-separated (default: %(default)s)")
    p.add_argument("--out", type=Path, help="results JSON (default: bench/results/driver_scale[-quick].json)")
    p.add_argument("--work", type=Path, help="data, local storage and logs (default: ~/.cache/gru4rec-bench/"
                                             "driver-scale/<name of --out>)")
    args = p.parse_args()
    if args.quick:
        args.storage_kind = "local"
    kinds = args.storage_kind.split(",")
    if not kinds or any(k not in KIND_TITLES for k in kinds):
        p.error(f"--storage-kind {args.storage_kind}: local, s3 or local,s3")
    args.kinds = kinds
    args.out = args.out or REPO / "bench" / "results" / f"driver_scale{'-quick' if args.quick else ''}.json"
    args.work = args.work or Path("~/.cache/gru4rec-bench/driver-scale").expanduser() / args.out.stem
    return args


def settings_of(args: argparse.Namespace) -> BenchSettings:
    """The bench's settings from the command line."""
    if args.quick:
        return dataclasses.replace(QUICK, seed=args.seed)
    return BenchSettings(trials=args.trials, studies=args.studies, concurrency=args.concurrency, kills=args.kills,
                         epoch_seconds=args.epoch_seconds, seed=args.seed)


def main() -> None:
    """Measure each storage kind in turn (a finished one is only printed again), printing its tables."""
    args = arguments()
    settings = settings_of(args)
    settings.losses_modes()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(args.work.resolve() / "cache")  # the S3 journal replica of driver and bench
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the driver's group is killed on the way out
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="driver-scale-") as scratch:
        paths = Paths(args.work.resolve(), Path(scratch))
        ensure_data(paths, settings.events, settings.seed)
        bench = Bench(settings, paths, args.out)
        failed = []
        for kind in args.kinds:
            phase = bench.run(kind)
            print(report(dataclasses.asdict(phase), settings), flush=True)
            failed += [kind] if phase.failure else []
    print(f"results written to {args.out}", file=sys.stderr)
    if failed:
        sys.exit(f"driver_scale: the search failed on {', '.join(failed)} storage (see the tables)")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"driver_scale: {e}")
