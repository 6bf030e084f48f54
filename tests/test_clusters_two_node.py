"""A search submitted with `ray job submit` to a real two-node Ray cluster runs its trials on both nodes.

The cluster lives on this one machine: `ray start --head` plus a second `ray start --address` node with its own
custom resource (`node2`), each with one CPU, so two concurrent trials (one CPU each) must use both nodes. Both
nodes get their own ports and their own temp dir (two nodes sharing one temp dir also share their
runtime-env directory, and one node's cleanup then deletes the other's job working dir) and token authentication
with the test's own token file. The job is the KubeRay RayJob's entrypoint from clusters/kuberay/rayjob.yaml,
submitted the way KubeRay's submitter does (`ray job submit ... -- <entrypoint>` in a shell) with the code
shipped by `--working-dir`; it is submitted twice, the second time standing for a retried RayJob, which
must resume the search from storage instead of starting it again.

Evidence that both nodes ran trials: every trial result records the pid of the actor that ran it, and Ray's
state API (`ray list actors`) gives each actor's node id; on one machine both nodes share an IP, so node ids are
what tell them apart. The results must be in the shared storage path.

Every Ray process of the test is stopped at the end, also on failure, by process group, and then any straggler
whose command line or environment names the test's private directory; no other Ray on the machine is touched
(no `ray stop`, which stops every Ray process of the user).
"""
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "rsc15_100k"
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
NAME = "two-node"
STUDY = "xe_shared"
TRIALS = 4
# Trials of about ten seconds: Tune reuses a trial's actor for the next trial (reuse_actors), so trials much
# shorter than the start of the second node's first actor would all end up on the head's actor.
SEARCH_ARGS = (f"--losses xe --modes shared --trials {TRIALS} --epochs 2 "
               "--fixed n_sample=2048,layers=256,batch_size=32 "
               "--gpus-per-trial 0 --cpus-per-trial 1 --max-concurrent 2 --top-k 1 --seeds 1 --quiet")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "train_tr.tsv").is_file(), reason=f"{DATA} is not present"),
              pytest.mark.skipif(not RAY.is_file(), reason=f"no ray CLI next to {sys.executable}")]


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free now (the kernel picks them; all sockets are held until all are chosen)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int, avoid: set[int]) -> int:
    """The first port of `size` consecutive free ports in 20000..29999 (below the kernel's ephemeral range)."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        start = rng.randrange(20000, 30000 - size)
        ports = range(start, start + size)
        if avoid.intersection(ports):
            continue
        try:
            held = []
            for port in ports:
                s = socket.socket()
                held.append(s)
                s.bind(("", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free worker port range")


class TwoNodeCluster:
    """`ray start --head` and a second `ray start --address` node on this machine, in a private directory."""

    def __init__(self, root: Path):
        self.root = root
        (root / "auth_token").write_text(secrets.token_hex(32))
        os.chmod(root / "auth_token", 0o600)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "auth_token"),
                        RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        ports = free_ports(15)
        self.gcs_port, self.dashboard_port, client_port = ports[:3]
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []
        workers = free_port_range(200, set(ports))
        self.node_args = [self._node_args(ports[3 + 6 * i: 9 + 6 * i], workers + 100 * i) for i in range(2)]
        self.head_args = ["--head", "--port", self.gcs_port, "--dashboard-port", self.dashboard_port,
                          "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                          "--ray-client-server-port", client_port]

    @staticmethod
    def _node_args(ports: list[int], first_worker_port: int) -> list:
        node_manager, object_manager, agent_listen, agent_grpc, runtime_env, metrics = ports
        return ["--node-manager-port", node_manager, "--object-manager-port", object_manager,
                "--dashboard-agent-listen-port", agent_listen, "--dashboard-agent-grpc-port", agent_grpc,
                "--runtime-env-agent-port", runtime_env, "--metrics-export-port", metrics,
                "--min-worker-port", first_worker_port, "--max-worker-port", first_worker_port + 99,
                "--num-cpus", 1, "--num-gpus", 0, "--object-store-memory", 256 * 2**20,
                "--disable-usage-stats", "--block"]

    def _start_node(self, name: str, args: list) -> None:
        log = self.root / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(RAY), "start", *map(str, args), "--temp-dir", str(self.root / name)],
                                    stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert proc.poll() is None, f"ray start ({name}) exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"ray start ({name}) did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)

    def start(self) -> None:
        self._start_node("head", [*self.head_args, *self.node_args[0]])
        self._start_node("node2", ["--address", f"127.0.0.1:{self.gcs_port}", "--resources", '{"node2": 1}',
                                   *self.node_args[1]])
        deadline = time.monotonic() + 60
        while len(self.nodes()) < 2:
            assert time.monotonic() < deadline, f"the second node did not join: {self.nodes()}"
            time.sleep(1)

    def state(self, kind: str) -> list[dict]:
        """`ray list <kind>` of this cluster (its state API, through the dashboard with the token)."""
        out = subprocess.run([str(RAY), "list", kind, "--address", self.dashboard, "--format", "json", "--detail",
                              "--limit", "10000"], env=self.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    def nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def submit(self, submission_id: str, entrypoint: str, runtime_env: dict, log: Path) -> subprocess.CompletedProcess:
        """What KubeRay's submitter runs: `ray job submit ... -- <entrypoint>`, the entrypoint pasted into a shell."""
        command = (f"{shlex.quote(str(RAY))} job submit --address {self.dashboard} --submission-id {submission_id} "
                   f"--runtime-env-json {shlex.quote(json.dumps(runtime_env))} -- {entrypoint}")
        result = subprocess.run(["bash", "-c", command], env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, timeout=420)
        log.write_text(result.stdout)
        return result

    def _our_processes(self, groups: set[int]) -> list[int]:
        """Pids of processes in our process groups, or whose command line or environment names our directory."""
        mark, pids = str(self.root).encode(), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if os.getpgid(int(entry.name)) in groups:
                    pids.append(int(entry.name))
                    continue
                if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
        return pids

    def stop(self) -> None:
        """SIGTERM to each node's process group, then SIGKILL to whatever of ours is left."""
        groups = {p.pid for p in self.procs}
        for group in groups:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while self._our_processes(groups) and time.monotonic() < deadline:
            time.sleep(0.5)
        for _ in range(3):
            for pid in self._our_processes(groups):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def cluster():
    # A short private directory: Ray's socket paths under it must stay below the 107-byte limit of Unix sockets.
    root = Path(tempfile.mkdtemp(prefix="g4r-", dir="/tmp"))
    nodes = TwoNodeCluster(root)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        leftovers = nodes._our_processes(set())
        shutil.rmtree(root, ignore_errors=True)
        assert not leftovers, f"Ray processes of the test survived its teardown: {leftovers}"


def rayjob_entrypoint() -> tuple[str, dict]:
    spec = yaml.safe_load((REPO / "clusters" / "kuberay" / "rayjob.yaml").read_text())["spec"]
    return spec["entrypoint"], yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]


def trial_pids(experiment: Path) -> dict[str, set[int]]:
    """The pid of the actor that ran each reported epoch, per trial, from the trials' metrics files."""
    pids = {}
    for trial in sorted(experiment.glob("trial_*")):
        lines = (trial / "metrics.jsonl").read_text().splitlines()
        pids[trial.name] = {json.loads(line)["pid"] for line in lines if line.strip()}
    return pids


def test_search_job_spreads_over_two_nodes_and_resumes_on_retry(cluster, tmp_path):
    # The dashboard refuses the job API without the token (token auth is on, as in clusters/*.yaml).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{cluster.dashboard}/api/jobs/", timeout=30)
    assert refused.value.code in (401, 403)

    entrypoint, env_vars = rayjob_entrypoint()
    storage = tmp_path / "shared-storage"  # one path both nodes write to: what NFS, S3 or GCS is on a cluster
    env_vars.update(SEARCH_NAME=NAME, SEARCH_DATA=str(DATA), SEARCH_STORAGE=str(storage),
                    SEARCH_LOCAL_DATA=str(tmp_path / "head-data"), SEARCH_ARGS=SEARCH_ARGS)
    runtime_env = {"working_dir": str(REPO), "env_vars": env_vars}

    first = cluster.submit("search-1", entrypoint, runtime_env, tmp_path / "job1.log")
    assert first.returncode == 0, first.stdout[-6000:]
    assert f"search {NAME}: 1 studies x {TRIALS} trials" in first.stdout, first.stdout[-6000:]
    assert "Job 'search-1' succeeded" in first.stdout

    # Results in the shared storage: settings, the Tune experiment with every trial's metrics (written by the node
    # that ran the trial; its checkpoints are gone once it ended), the retrained model and the tables.
    search = storage / NAME
    assert json.loads((search / "search.json").read_text())["name"] == NAME
    for name in ["results.csv", "results.md", f"{STUDY}_best.py", f"{STUDY}_best.model", f"{STUDY}_result.json"]:
        assert (search / name).is_file(), name
    experiment = search / "trials"
    assert list(experiment.glob("experiment_state-*.json"))
    pids = trial_pids(experiment)
    assert len(pids) == TRIALS and all(pids.values()), pids
    for trial in pids:
        assert (experiment / trial / "metrics.jsonl").is_file(), f"{trial} has no metrics in storage"
        assert not list((experiment / trial).glob("checkpoint_*")), f"{trial} kept a checkpoint after it ended"

    # Which node ran each trial: the trial's actor pid -> the actor's node in Ray's state API.
    nodes = cluster.nodes()
    head = next(n["node_id"] for n in nodes if n["is_head_node"])
    second = next(n["node_id"] for n in nodes if "node2" in n["resources_total"])
    actors = [a for a in cluster.state("actors") if a["class_name"] != "JobSupervisor" and a.get("pid")]
    node_of_pid = {a["pid"]: a["node_id"] for a in actors}
    trial_nodes = {trial: {node_of_pid.get(pid) for pid in ran} for trial, ran in pids.items()}
    used = set().union(*trial_nodes.values())
    assert None not in used, f"a trial's actor is unknown to the state API: {trial_nodes}, {actors}"
    assert used == {head, second}, f"trials did not run on both nodes: {trial_nodes} (head {head}, node2 {second})"

    # A retried RayJob runs the same entrypoint again: it must find the search and resume it, not start over.
    retry = cluster.submit("search-2", entrypoint, runtime_env, tmp_path / "job2.log")
    assert retry.returncode == 0, retry.stdout[-6000:]
    assert f"search {NAME} exists in {storage}: resuming it" in retry.stdout, retry.stdout[-6000:]
    assert f"study {STUDY}: already finished" in retry.stdout, retry.stdout[-6000:]
    assert trial_pids(experiment).keys() == pids.keys()  # no trial added or rerun

    # Bringing results back needs only the storage: `gru4rec-search status` reads it without Ray.
    status = subprocess.run([str(BIN / "gru4rec-search"), "status", NAME, "--storage", str(storage)],
                            capture_output=True, text=True, timeout=120, env=cluster.env)
    assert status.returncode == 0, status.stderr
    assert f"{TRIALS}/{TRIALS}" in status.stdout, status.stdout
