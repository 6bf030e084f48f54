"""Real dataset sizes: loading, trainer build, training and evaluation speed, baselines, checkpoint size.

Measured per size: seconds, peak and held RSS and array bytes of loading train_full and test from TSV
and from Parquet; seconds and memory of building the trainer; training events/s and minibatches/s;
evaluation predictions/s of the trained model; seconds and peak RSS of the popularity and Markov
baselines; the bytes of one saved training state. Each size's synthetic data is generated once by this
checkout's generator and cached outside the repository, as TSV and Parquet. Every code version
(`--code NAME=DIR`: a checkout put first on PYTHONPATH) is measured on the same files, and every
measurement runs in a fresh subprocess of this script, so that its peak memory is its own and an older
checkout is measured by the same benchmark code. Prints one Markdown table per size (with a ratio
column per later version against the first) and writes the results as JSON. CPU only.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SIZES = {"0.1M": (100_000, 3_000), "3M": (3_000_000, 37_500), "30M": (31_600_000, 37_500),
         "1M-items": (6_000_000, 1_000_000)}
SPLITS, FORMATS = ("train_full", "test"), ("tsv", "parquet")
# The RSC15 best cross-entropy setting of the official code: layers 100, batch 32, n_sample 2048, shared embedding.
CONFIG = dict(loss="cross-entropy", layers=[100], batch_size=32, n_sample=2048, dropout_p_embed=0.0,
              dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, sample_alpha=0.5, logq=1.0,
              constrained_embedding=True, embedding=0)
CUTOFFS = (20,)
TRIAL_EPOCHS = 10  # the search's default epochs per trial
SEARCH_SPLITS = (("train", "train_tr"), ("valid", "train_valid"), ("train-full", "train_full"), ("test", "test"))


def status_bytes(key: str, pid: int | str = "self") -> int:
    """A memory figure of /proc/PID/status (VmHWM: peak RSS, VmRSS: resident now) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{key} not in /proc/{pid}/status")


# ---- Worker side: runs in a subprocess with PYTHONPATH=<code version>. The library is imported inside the
# phases, so that the driver stays lean and only uses APIs that both the old and the new checkout have.

def held_bytes() -> int:
    """Resident memory after a garbage collection."""
    gc.collect()
    return status_bytes("VmRSS")


def reset_peak() -> None:
    """Start a phase: the process's peak RSS (VmHWM) falls back to what is resident now."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")


def array_figures(data: Any) -> dict:
    """Sizes of a SessionData and the bytes of its arrays (item indices and session offsets)."""
    return {"events": int(data.n_events), "sessions": int(data.n_sessions), "items": int(data.n_items),
            "array_bytes": int(data.items.nbytes + data.offsets.nbytes), "items_dtype": str(data.items.dtype),
            "offsets_dtype": str(data.offsets.dtype)}


def load_phase(job: dict) -> dict:
    """Load one split from one format; the test split with the item map that the train_full load kept.

    The peak and held RSS are the whole process's, the imports included (`base_bytes` before the load)."""
    import pandas as pd
    import pyarrow.parquet  # noqa: F401  (imported before the baseline, as read_events imports it on use)
    from gru4rec import load_session_data
    item_map = Path(job["shared"]) / f"item_ids-{job['format']}.pickle"  # written by this code version's worker
    item_ids = pd.read_pickle(item_map) if job["split"] == "test" else None
    path = Path(job["data"]) / f"{job['split']}.{job['format']}"
    reset_peak()
    base = status_bytes("VmRSS")
    start = time.perf_counter()
    data = load_session_data(path, item_ids)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "base_bytes": base, "held_bytes": held_bytes(), "peak_bytes": status_bytes("VmHWM"),
              **array_figures(data)}
    if job["split"] == "train_full":
        pd.to_pickle(data.item_ids, item_map)
    return result


def train_phase(job: dict) -> dict:
    """Build the trainer on train_full (Parquet), time training steps, evaluate the model, save its state."""
    import torch
    from gru4rec import Config, Trainer, load_session_data
    torch.set_num_threads(job["threads"])
    train = load_session_data(Path(job["data"]) / "train_full.parquet")
    reset_peak()
    loaded = status_bytes("VmRSS")
    start = time.perf_counter()
    trainer = Trainer(Config(**CONFIG), train, device="cpu", threads=job["threads"])
    result = {"build_seconds": time.perf_counter() - start, "build_added_bytes": held_bytes() - loaded,
              "build_peak_bytes": status_bytes("VmHWM")}
    result.update(training_speed(trainer, job["warmup"], job["steps"], job["repeats"]))
    result.update(evaluation_speed(trainer.model, train.item_ids, job))
    result["checkpoint_bytes"], result["checkpoint_seconds"] = save_state(trainer, Path(job["scratch"]))
    result["trial_states"] = states_per_trial(TRIAL_EPOCHS)
    result["trial_write_bytes"] = result["trial_states"] * result["checkpoint_bytes"]
    return result


def states_per_trial(n_epochs: int) -> int:
    """Training states a search trial of `n_epochs` epochs writes with the default settings: by the checkout's
    checkpoint rule, or one per epoch in a checkout without one (whose every report carried a checkpoint)."""
    try:
        from search.ledger import checkpoint_epochs
        from search.settings import CHECKPOINT_EVERY
    except ImportError:
        return n_epochs
    return len(checkpoint_epochs(n_epochs, 1, 3.0, CHECKPOINT_EVERY))


def driver_phase(job: dict) -> dict:
    """Start a real search (`gru4rec-search run`, one trial on a local Ray) on the size's four Parquet splits and
    follow the driver's resident memory until its trial has run for a while; then stop it all."""
    import signal
    data, store = Path(job["data"]), Path(job["scratch"]) / "store"
    command = [sys.executable, "-m", "search.cli", "run", "--name", "scale", "--storage", str(store),
               *(f"--{flag}={data / f'{split}.parquet'}" for flag, split in SEARCH_SPLITS),
               "--losses", "xe", "--modes", "shared", "--trials", "1", "--epochs", "1", "--local-cpus", "2",
               "--no-dashboard", "--quiet"]
    log = open(Path(job["scratch"]) / "driver.log", "w")
    # cwd is the scratch folder: `-m` puts the cwd first on sys.path, and PYTHONPATH must choose the package.
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=job["scratch"], start_new_session=True)
    samples, started, deadline = [], None, time.perf_counter() + job["driver_timeout"]
    try:
        while time.perf_counter() < deadline and proc.poll() is None:
            samples.append(status_bytes("VmRSS", proc.pid))
            if started is None and any((store / "scale" / "trials").glob("trial_*/")):
                started = len(samples)
            if started is not None and len(samples) - started >= job["driver_samples"]:
                break
            time.sleep(0.5)
        # The kernel syncs a process's RSS counters lazily: VmHWM can lag the last VmRSS read by a few pages.
        peak = max([*samples, status_bytes("VmHWM", proc.pid) if proc.poll() is None else 0])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if started is None:
        raise RuntimeError(f"no trial started within {job['driver_timeout']:g} s; see {log.name}")
    return {"driver_peak_bytes": peak, "driver_trial_bytes": max(samples[started:])}


def training_speed(trainer: Any, warmup: int, steps: int, repeats: int) -> dict:
    """Events/s and minibatches/s of the first epoch's steps: medians over `repeats` blocks, after `warmup` steps."""
    steps = min(steps, (trainer.n_steps - warmup) // repeats)
    trainer.start_epoch()
    for t in range(warmup):
        trainer.run_step(t)
    events_per_s, minibatches_per_s = [], []
    for first in range(warmup, warmup + repeats * steps, steps):
        start = time.perf_counter()
        for t in range(first, first + steps):
            trainer.run_step(t)
        seconds = time.perf_counter() - start
        events_per_s.append(float(trainer.n_active[first:first + steps].sum()) / seconds)
        minibatches_per_s.append(steps / seconds)
    return {"timed_steps": steps, "events_per_s": statistics.median(events_per_s),
            "minibatches_per_s": statistics.median(minibatches_per_s)}


def evaluation_speed(model: Any, item_ids: Any, job: dict) -> dict:
    """Predictions/s of `model` on the first test sessions (about job['predictions'] predictions): median of repeats."""
    from gru4rec import evaluate, load_session_data
    head = Path(job["scratch"]) / "test-head.parquet"
    write_head(Path(job["data"]) / "test.parquet", head, job["predictions"])
    data = load_session_data(head, item_ids)
    n = evaluate(model, data, CUTOFFS).n  # warm-up, and the prediction count
    seconds = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        evaluate(model, data, CUTOFFS)
        seconds.append(time.perf_counter() - start)
    return {"predictions": n, "predictions_per_s": n / statistics.median(seconds)}


def write_head(source: Path, target: Path, predictions: int) -> None:
    """Write the first sessions of an event file that give at least `predictions` predictions (or all of them)."""
    import numpy as np
    import pandas as pd
    frame = pd.read_parquet(source)
    lengths = frame.groupby("SessionId", sort=False).size()
    n_sessions = int(np.searchsorted(np.cumsum(lengths.to_numpy() - 1), predictions)) + 1
    frame[frame["SessionId"].isin(lengths.index[:n_sessions])].to_parquet(target, index=False)


def save_state(trainer: Any, scratch: Path) -> tuple[int, float]:
    """The size of the file `save_training_state` writes for the trainer's current state, and the seconds it took
    (to local disk, flushed: what one checkpoint costs a trial before the storage's own upload)."""
    from gru4rec.checkpoint import save_training_state
    path = scratch / "state.safetensors"
    start = time.perf_counter()
    save_training_state(path, trainer.state_dict())
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return size, seconds


def baselines_phase(job: dict) -> dict:
    """Popularity and Markov baselines on the whole test split (both splits from Parquet): seconds and peak RSS."""
    import torch
    from gru4rec import load_session_data
    from search.baselines import evaluate_baselines
    torch.set_num_threads(job["threads"])
    train = load_session_data(Path(job["data"]) / "train_full.parquet")
    test = load_session_data(Path(job["data"]) / "test.parquet", train.item_ids)
    reset_peak()
    Path(job["started"]).touch()  # the driver's timeout counts from here
    start = time.perf_counter()
    metrics = evaluate_baselines(train, test, CUTOFFS, "standard")
    return {"seconds": time.perf_counter() - start, "peak_bytes": status_bytes("VmHWM"), "metrics": metrics}


def generate_phase(job: dict) -> dict:
    """Write the splits of one size as TSV and Parquet (the folder appears complete or not at all)."""
    from gru4rec.datasets.synthetic import SyntheticSpec, write_splits
    spec = SyntheticSpec(n_events=job["events"], n_items=job["items"], seed=job["seed"])
    write_splits(job["data"], spec, formats=FORMATS)
    return {}


def environment() -> dict:
    """Library versions and the gru4rec package a worker imported."""
    import numpy
    import pandas
    import torch

    import gru4rec
    return {"gru4rec": str(Path(gru4rec.__file__).parent), "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "python": sys.version.split()[0]}


PHASES: dict[str, Callable[[dict], dict]] = {"generate": generate_phase, "load": load_phase, "train": train_phase,
                                             "baselines": baselines_phase, "driver": driver_phase}


def run_worker(job: dict) -> None:
    """Run one phase in this process and write its result (or its error) as JSON to job['result']."""
    out = Path(job["result"])
    try:
        env = environment()
        if not Path(env["gru4rec"]).is_relative_to(Path(job["code"]).resolve()):
            raise RuntimeError(f"imported gru4rec from {env['gru4rec']}, not from {job['code']}")
        result = {**PHASES[job["phase"]](job), "environment": env}
    except Exception as e:
        out.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        raise
    out.write_text(json.dumps(result))


# ---- Driver side: data, subprocesses, results file and tables.

@dataclass(frozen=True)
class Job:
    """One worker subprocess per code version: a phase and its parameters."""

    name: str
    phase: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of a size's table: the figure `key` of job `job`'s result, shown as `unit`."""

    label: str
    job: str
    key: str
    unit: str  # "s", "bytes", "rate" or "count"


# A new measurement is a phase in PHASES, a Job here and its Rows below.
JOBS = [Job(f"load {split}.{fmt}", "load", {"split": split, "format": fmt}) for fmt in FORMATS for split in SPLITS]
JOBS += [Job("train", "train"), Job("baselines", "baselines"), Job("driver", "driver")]


def load_rows(split: str, fmt: str) -> list[Row]:
    """The four rows of one load: seconds, peak and held RSS, bytes of the arrays."""
    job = f"load {split}.{fmt}"
    return [Row(f"{job}: seconds", job, "seconds", "s"), Row(f"{job}: peak RSS", job, "peak_bytes", "bytes"),
            Row(f"{job}: held RSS (after gc)", job, "held_bytes", "bytes"),
            Row(f"{job}: items + offsets arrays", job, "array_bytes", "bytes")]


ROWS = [Row(f"{split} events", f"load {split}.parquet", "events", "count") for split in SPLITS]
ROWS += [Row("worker RSS before a load (Python, torch, pandas)", "load train_full.tsv", "base_bytes", "bytes")]
ROWS += [row for split in SPLITS for fmt in FORMATS for row in load_rows(split, fmt)]
ROWS += [Row("trainer build: seconds", "train", "build_seconds", "s"),
         Row("trainer build: RSS added", "train", "build_added_bytes", "bytes"),
         Row("trainer build: peak RSS", "train", "build_peak_bytes", "bytes"),
         Row("training: events/s", "train", "events_per_s", "rate"),
         Row("training: minibatches/s", "train", "minibatches_per_s", "rate"),
         Row("evaluation: predictions/s", "train", "predictions_per_s", "rate"),
         Row("evaluation: predictions per run", "train", "predictions", "count"),
         Row("baselines: seconds", "baselines", "seconds", "s"),
         Row("baselines: peak RSS", "baselines", "peak_bytes", "bytes"),
         Row("training state: bytes per checkpoint", "train", "checkpoint_bytes", "bytes"),
         Row("training state: seconds to save (local disk)", "train", "checkpoint_seconds", "s"),
         Row(f"{TRIAL_EPOCHS}-epoch trial: training states written", "train", "trial_states", "count"),
         Row(f"{TRIAL_EPOCHS}-epoch trial: bytes written to storage", "train", "trial_write_bytes", "bytes"),
         Row("search driver: peak RSS", "driver", "driver_peak_bytes", "bytes"),
         Row("search driver: RSS while its trial runs", "driver", "driver_trial_bytes", "bytes")]


def progress(message: str) -> None:
    """A progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def run_job(spec: dict, code: Path, timeout: float | None = None) -> dict:
    """Run a worker with PYTHONPATH=code; its result, {'error': ...}, or {'stopped_after': s, 'peak_bytes': ...}
    when its timed section (from its touching spec['started']) ran past `timeout` seconds and it was killed."""
    result = Path(spec["result"])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    # The worker's stdout goes to our stderr: stdout carries only the tables.
    with subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(code)}, stdout=sys.stderr) as proc:
        if timeout is not None and not finished_in_time(proc, Path(spec["started"]), timeout):
            peak = status_bytes("VmHWM", proc.pid)  # still running: /proc/PID/status is there
            proc.kill()
            proc.wait()
            return {"stopped_after": timeout, "peak_bytes": peak}
    if result.exists():
        return json.loads(result.read_text())
    return {"error": f"the worker exited with code {proc.returncode} and wrote no result"}


def finished_in_time(proc: subprocess.Popen, started: Path, timeout: float) -> bool:
    """Wait for the worker; False if it is still running `timeout` seconds after `started` appeared."""
    while not started.exists():
        if proc.poll() is not None:
            return True
        time.sleep(0.1)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return proc.poll() is not None  # reaps a worker that ended just now, so that it is not taken as running
    return True


def ensure_data(size: str, cache: Path, seed: int) -> Path:
    """The cached folder of one size, generated (by this checkout) if it is not complete."""
    events, items = SIZES[size]
    generator = hashlib.sha256((REPO / "gru4rec" / "datasets" / "synthetic.py").read_bytes()).hexdigest()[:8]
    folder = cache / f"{size}-{events}-{items}-seed{seed}-{generator}"  # a changed generator makes new data
    needed = [folder / f"{split}.{fmt}" for split in SPLITS for fmt in FORMATS]
    if all(p.is_file() for p in needed):
        return folder
    progress(f"[{size}] generating {events:,} events over {items:,} items into {folder}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".generate-") as scratch:
        spec = {"phase": "generate", "code": str(REPO), "data": str(folder), "events": events, "items": items,
                "seed": seed, "result": str(Path(scratch) / "result.json")}
        outcome = run_job(spec, REPO)
    if "error" in outcome:
        sys.exit(f"generating {folder} failed: {outcome['error']}")
    progress(f"[{size}] generated in {time.perf_counter() - start:.1f} s")
    return folder


def measure_size(size: str, folder: Path, codes: dict[str, Path], settings: dict) -> dict:
    """Every job for every code version (the versions alternating job by job); the size's results entry."""
    figures: dict[str, dict[str, dict]] = {name: {} for name in codes}
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".scratch-") as scratch:
        for job in JOBS:
            for name, code in codes.items():
                progress(f"[{size}] {name}: {job.name} ...")
                start = time.perf_counter()
                spec = job_spec(job, code, folder, Path(scratch) / name, settings)
                timeout = settings["baselines_timeout"] if job.phase == "baselines" else None
                figures[name][job.name] = outcome = run_job(spec, code, timeout)
                progress(f"[{size}] {name}: {job.name} {outcome_word(outcome)} ({time.perf_counter() - start:.1f} s)")
    events, items = SIZES[size]
    return {"events": events, "items": items, "data": str(folder), "settings": settings,
            "codes": {name: {"dir": str(code), "jobs": figures[name]} for name, code in codes.items()}}


def job_spec(job: Job, code: Path, folder: Path, shared: Path, settings: dict) -> dict:
    """A worker's job: phase, parameters, data, its own folder and one shared by its code version's jobs."""
    work = shared / job.name.replace(" ", "-")
    work.mkdir(parents=True)
    return {"phase": job.phase, "code": str(code), "data": str(folder), "scratch": str(work), "shared": str(shared),
            "result": str(work / "result.json"), "started": str(work / "started"), **settings, **job.params}


def outcome_word(outcome: dict) -> str:
    """How a job ended, for the progress line."""
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    return "stopped" if "stopped_after" in outcome else "done"


def significant(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant digits, without exponent, thousands separated."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    return f"{round(x, decimals):,.{max(decimals, 0)}f}"


def show(value: float, unit: str) -> str:
    """A figure with its unit: bytes in kB/MB/GB (10^3, 10^6, 10^9), seconds, counts and rates to 3 digits."""
    if unit == "bytes":
        scale, name = next((s, n) for s, n in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1, "B")) if value >= s or s == 1)
        return f"{significant(value / scale)} {name}"
    if unit == "s":
        return f"{significant(value)} s"
    if unit == "count":
        return f"{int(value):,}"
    return significant(value)


def cell(outcome: dict, row: Row) -> tuple[str, float | None]:
    """A table cell and the number behind it (None where there is none to compare)."""
    if "error" in outcome:
        return "failed", None
    if "stopped_after" in outcome:
        if row.key == "seconds":
            return f"> {significant(outcome['stopped_after'])} s (stopped)", None
        if row.key in outcome:
            return f"{show(outcome[row.key], row.unit)} at the stop", None
        return "(stopped)", None
    return show(outcome[row.key], row.unit), outcome[row.key]


def table(entry: dict) -> str:
    """The Markdown table of one size: a row per measurement, a column per code version, ratios to the first."""
    names = list(entry["codes"])
    header = ["measurement", *names, *(f"{name} / {names[0]}" for name in names[1:])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        cells = [cell(entry["codes"][name]["jobs"].get(row.job, {"error": "not run"}), row) for name in names]
        first = cells[0][1]
        ratios = [f"{value / first:.2f}" if value is not None and first else "-" for _, value in cells[1:]]
        lines.append("| " + " | ".join([row.label, *(text for text, _ in cells), *ratios]) + " |")
    return "\n".join(lines)


def report(size: str, entry: dict) -> str:
    """Title, settings and table of one size."""
    s = entry["settings"]
    config = ", ".join(f"{k} {v}" for k, v in CONFIG.items())
    return "\n".join([
        f"### {size}: {entry['events']:,} events over {entry['items']:,} items", "",
        f"Data: {entry['data']}. CPU, {s['threads']} torch thread(s); each version's figures come from fresh "
        "subprocesses per job (loads, train, baselines); test is loaded with the item map of train_full in the same "
        "format. Training on train_full.parquet: "
        f"{config}; median of {s['repeats']} blocks of up to {s['steps']} steps after {s['warmup']} warm-up steps. "
        f"Evaluation: the trained model on the first test sessions (at least {s['predictions']:,} predictions, or the "
        f"whole split; all items ranked), median of {s['repeats']}. "
        f"Baselines stopped past {s['baselines_timeout']:g} s. "
        "RSS is the whole worker process's (peak: since the phase began); MB = 10^6 bytes. Versions: "
        + ", ".join(f"{name} = {code['dir']}" for name, code in entry["codes"].items()) + ".", "",
        table(entry), ""])


def read_results(path: Path) -> dict:
    """The results file's contents, or an empty one."""
    return json.loads(path.read_text()) if path.is_file() else {"sizes": {}}


def write_results(path: Path, results: dict) -> None:
    """Write through a temporary file, so that an interrupted run leaves the previous results whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def parse_codes(values: list[str] | None) -> dict[str, Path]:
    """NAME=DIR pairs, in order; each DIR must hold a gru4rec package."""
    codes: dict[str, Path] = {}
    for value in values or [f"this={REPO}"]:
        name, sep, directory = value.partition("=")
        path = Path(directory).expanduser().resolve()
        if not sep or not name or name in codes or not (path / "gru4rec" / "__init__.py").is_file():
            sys.exit(f"--code {value}: expected a new NAME=DIR with DIR holding gru4rec/ (a checkout's root)")
        codes[name] = path
    return codes


def arguments() -> argparse.Namespace:
    """The command line; --sizes becomes a list."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument("--sizes", default=",".join(SIZES),
                       help="comma-separated, default all: 0.1M (100k events, 3,000 items), 3M (3M events, 37,500 "
                            "items), 30M (31.6M events, 37,500 items: Yoochoose-like), 1M-items (6M events, "
                            "1,000,000 items)")
    sizes.add_argument("--quick", action="store_true", help="only the 0.1M size (what CI runs)")
    p.add_argument("--code", action="append", metavar="NAME=DIR",
                   help="a code version to measure: the checkout DIR goes first on PYTHONPATH (repeatable; "
                        "default this=<this repository>); data is always generated by this repository's code")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/gru4rec-bench/scale").expanduser(),
                   help="data cache: one folder <size>-<events>-<items>-seed<seed>-<generator digest> per size "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data generator (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scale.json",
                   help="results JSON; sizes measured now replace their entries, others stay (default: %(default)s)")
    p.add_argument("--report-only", action="store_true",
                   help="print the tables of --out (of the sizes selected) without measuring")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for training, evaluation and baselines "
                                                          "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="timed training steps per repeat (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=50, help="untimed training steps first (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of training and evaluation; medians "
                                                          "(default: %(default)s)")
    p.add_argument("--predictions", type=int, default=3000,
                   help="evaluate on the first test sessions that give at least this many predictions (or on "
                        "the whole test split) (default: %(default)s)")
    p.add_argument("--baselines-timeout", type=float, default=600, metavar="SECONDS",
                   help="kill the baselines' worker when their run (loading excluded) passes this many seconds "
                        "(default: %(default)s)")
    p.add_argument("--driver-timeout", type=float, default=900, metavar="SECONDS",
                   help="give up on the search driver's measurement if no trial started by then (default: %(default)s)")
    p.add_argument("--driver-samples", type=int, default=20,
                   help="resident-memory samples of the driver (0.5 s apart) once its trial started (default: "
                        "%(default)s)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.sizes = ["0.1M"] if args.quick else args.sizes.split(",")
    unknown = [s for s in args.sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size {unknown[0]!r}; sizes: {', '.join(SIZES)}")
    return args


def main() -> None:
    args = arguments()
    if args.worker:
        # Python put this script's folder first on sys.path; its search.py would shadow the search package.
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
        run_worker(json.loads(args.worker))
        return
    results = read_results(args.out)
    if args.report_only:
        present = [size for size in args.sizes if size in results["sizes"]]
        if not present:
            sys.exit(f"{args.out} holds no results of the sizes {', '.join(args.sizes)}")
        print("\n".join(report(size, results["sizes"][size]) for size in present))
        return
    codes = parse_codes(args.code)
    settings = {key: getattr(args, key) for key in ("threads", "steps", "warmup", "repeats", "predictions",
                                                    "baselines_timeout", "driver_timeout", "driver_samples")}
    args.cache.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        folder = ensure_data(size, args.cache.resolve(), args.seed)
        results["sizes"][size] = measure_size(size, folder, codes, settings)
        write_results(args.out, results)
        print(report(size, results["sizes"][size]), flush=True)
    progress(f"results written to {args.out}")


if __name__ == "__main__":
    main()
