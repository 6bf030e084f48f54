"""The CUDA path checked on a lent GPU in one command: parity with the CPU, graphs against eager, training and
evaluation speed, peak memory against the memory model, and trials per GPU.

    PYTHONPATH=. python bench/gpu_check.py --out DIR          # on the GPU: under 8 minutes on one H100
    python bench/gpu_check.py --device cpu --quick --out DIR  # the same code paths, tiny, in seconds

Every part has its own time limit (it measures fewer steps or configs rather than run over) and the whole
run stays within --seconds; a part that fails is reported with its error and the next one runs. After every
part DIR/gpu_check.json and DIR/gpu_check.md are rewritten, so a run cut short leaves what it measured.
The data is generated (`gru4rec.datasets.synthetic`): nothing is read from ../shared or downloaded. Nothing
here imports Ray, Optuna or `search`.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's gru4rec, installed or not

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import gru4rec.model as model_module  # noqa: E402
from common import environment, markdown_table  # noqa: E402
from gru4rec.config import Config, parse_param_string  # noqa: E402
from gru4rec.data import SessionData  # noqa: E402
from gru4rec.datasets.synthetic import SyntheticSpec, generate_sessions, split_by_time  # noqa: E402
from gru4rec.evaluate import EvalResult, evaluate, score_budget  # noqa: E402
from gru4rec.model import GRU4Rec  # noqa: E402
from gru4rec.options import tf32  # noqa: E402
from gru4rec.sampling import DEFAULT_STORE_SIZE  # noqa: E402
from gru4rec.train import Trainer, free_memory  # noqa: E402
from train_speed import OFFICIAL_SETTINGS  # noqa: E402

PARITY_TOLERANCE = 0.02  # relative difference of Recall@20 and MRR@20, CPU against the device
LOSS_SUM_TOLERANCE = 1e-5  # relative difference of the loss sums, graph against eager
WEIGHT_TOLERANCE = 1e-5  # largest |w_graph - w_eager| over the largest |w|
RELEASE_SLACK = 2 << 20  # bytes a dropped trainer may leave allocated or reserved
HEADLINE_TARGET = 2000.0  # minibatches/s at the headline setting, graphs on
PACKING_TARGET = 3.0  # summed events/s of the best packing over one trial per GPU
MEMORY_TOLERANCE = 0.25  # measured peak against the memory model
GRACE = 20.0  # seconds past a part's limit before it is interrupted
HEADLINE = OFFICIAL_SETTINGS["xe layers 100 batch 32"]
BPR_MAX = OFFICIAL_SETTINGS["bpr-max layers 224 batch 128"]
WIDE = "loss=cross-entropy,layers=512,batch_size=512,n_sample=2048,logq=1.0,constrained_embedding=True,embedding=0"
SPEED_SETTINGS = {"xe b32 l100 (headline)": HEADLINE, "bpr-max b128 l224": BPR_MAX, "xe b512 l512": WIDE}
MODES = {"shared": {"constrained_embedding": "True", "embedding": "0"},
         "separate": {"constrained_embedding": "False", "embedding": "layersize"},
         "none": {"constrained_embedding": "False", "embedding": "0"}}
SPACE_LOSSES = {"xe": "cross-entropy", "bpr-max": "bpr-max"}
WARMUP_STEPS = 8  # covers the 3 eager warm-up calls and the capture of a step
CHUNK = 32  # steps launched between two looks at the clock


@dataclass(frozen=True)
class Plan:
    """Sizes of a run: the full check for a GPU, or QUICK (tiny configs and data, the same code paths)."""

    events: int = 100_000  # the rsc15-like data (about rsc15_100k's size), before its test split
    items: int = 3_000
    test_days: float = 3.0
    mid_items: int = 37_500
    mid_events: int = 500_000
    big_items: int = 1_000_000
    big_events: int = 2_000_000
    eval_events: int = 20_000  # test events of the 37.5k and 1M catalogues
    parity_epochs: int = 2
    graph_steps: int = 200
    speed_seconds: float = 2.0
    eval_repeats: int = 3
    trial_seconds: float = 4.0
    trial_counts: tuple[int, ...] = (1, 2, 4, 8)
    memory_steps: int = 8
    tiny: bool = False  # every config shrunk to layers <= 16, batch <= 32, n_sample <= 64
    seconds: dict[str, float] = field(default_factory=lambda: {
        "data": 45, "parity": 100, "graphs": 30, "speed": 70, "evaluation": 30, "memory": 85, "trials": 90})


QUICK = Plan(events=6_000, items=300, mid_items=2_000, mid_events=20_000, big_items=8_000, big_events=30_000,
             eval_events=2_000, graph_steps=40, speed_seconds=0.3, eval_repeats=1, trial_seconds=1.0,
             trial_counts=(1, 2), memory_steps=5, tiny=True)


class PartTimeout(Exception):
    """A part ran past its limit and the grace after it."""


@dataclass
class Part:
    """What one part found: rows of figures, verdicts against the targets, notes, and how it ended."""

    name: str
    status: str = "running"
    seconds: float = 0.0
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> list[str]:
        """The part's section of the report: status, error, table, verdicts and notes."""
        lines = [f"## {self.name}", "", f"Status: **{self.status}** ({self.seconds:.0f} s)"]
        if self.error:
            lines += ["", "```", self.error.strip()[-2000:], "```"]
        if self.rows:
            lines += ["", markdown_table(self.rows)]
        lines += [""] + [f"- {verdict}" for verdict in self.verdicts] + [f"- note: {note}" for note in self.notes]
        return lines + [""]


class Report:
    """The JSON and Markdown files, rewritten after every part so that a run cut short leaves its results."""

    def __init__(self, out: Path, header: dict[str, Any]):
        self.out = out
        self.header = header
        self.parts: list[Part] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, part: Part) -> None:
        self.parts.append(part)
        self.write()

    def write(self) -> None:
        data = {"header": self.header, "parts": {part.name: dataclasses.asdict(part) for part in self.parts}}
        (self.out / "gpu_check.json").write_text(json.dumps(data, indent=1, default=str))
        lines = ["# GPU check of the CUDA path", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += ["", "| part | status | seconds |", "|---|---|---|"]
        lines += [f"| {p.name} | {p.status} | {p.seconds:.0f} |" for p in self.parts] + [""]
        for part in self.parts:
            lines += part.markdown()
        (self.out / "gpu_check.md").write_text("\n".join(lines))


def log(start: float, message: str) -> None:
    print(f"[{time.monotonic() - start:6.1f}s] {message}", flush=True)


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Interrupt the block with PartTimeout after `seconds`: the backstop behind each part's own time checks."""
    def expire(signum, frame):
        raise PartTimeout(f"interrupted {seconds:.0f} s after the part began")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def float32_init() -> Iterator[None]:
    """GRU4Rec draws its tables in float64 on one CPU thread (about a minute for a 1M x 1,536 table); speed
    and memory do not depend on the values, so these measurements draw float32 within the same bounds."""
    def uniform(rows: int, cols: int, blocks: int, generator: torch.Generator,
                out: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty(rows, cols * blocks) if out is None else out
        bound = math.sqrt(6.0 / (rows + cols))
        out[:rows].uniform_(-bound, bound, generator=generator)
        return out
    saved = model_module.uniform_blocks
    model_module.uniform_blocks = uniform
    try:
        yield
    finally:
        model_module.uniform_blocks = saved


def settle(device: torch.device) -> None:
    """Give back what dropped objects held: garbage, the cuBLAS workspace torch keeps per stream until told
    (its own leak checks clear them the same way), and the allocator's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch._C._cuda_clearCublasWorkspaces()
    free_memory(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative(a: float, b: float) -> float:
    """|a - b| relative to b (0 when both are 0)."""
    return abs(a - b) / abs(b) if b else float(a != b)


def config_of(setting: str, plan: Plan, **overrides: str) -> Config:
    """A config from a parameter string and overrides; shrunk to tiny sizes under a tiny plan."""
    params = {**parse_param_string(setting), **overrides}
    if plan.tiny:
        params.update(layers="16", batch_size=str(min(32, int(params.get("batch_size", 64)))),
                      n_sample=str(min(64, int(params.get("n_sample", 2048)))))
    return Config.from_dict(params)


def rsc15_like(plan: Plan) -> tuple[SessionData, SessionData]:
    """Generated sessions the size of rsc15_100k (about 100k events, 3k items) and its time-split test set."""
    events = generate_sessions(SyntheticSpec(n_events=plan.events, n_items=plan.items, seed=0))
    train, test = split_by_time(events, plan.test_days)
    train_data = SessionData.from_frame(train, source="rsc15-like")
    return train_data, SessionData.from_frame(test, train_data.item_ids, source="rsc15-like test")


@dataclass
class Catalogue:
    """Generated events over a whole catalogue (every item in the map, seen in the events or not)."""

    name: str
    train: SessionData
    test: SessionData  # the first sessions of the same events: enough for speed and memory


def catalogue(name: str, n_items: int, n_events: int, test_events: int) -> Catalogue:
    """Events with a flat popularity curve (most items occur), the item map filled up to `n_items`."""
    frame = generate_sessions(SyntheticSpec(n_events=n_events, n_items=n_items, zipf_exponent=0.6, seed=2))
    present = np.unique(frame["ItemId"].to_numpy())
    extra = np.arange(present.max() + 1, present.max() + 1 + n_items - len(present))
    ids = pd.Index(np.concatenate([present, extra]))
    return Catalogue(name, SessionData.from_frame(frame, ids, source=name),
                     SessionData.from_frame(frame.iloc[:test_events], ids, source=f"{name} test"))


class Stepper:
    """Runs a trainer's steps one after another, epoch after epoch, counting the events trained on."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.active = trainer.n_active.cpu().numpy()
        self.position = 0
        trainer.start_epoch()

    def run(self, n: int) -> int:
        """`n` steps; returns their events."""
        events = 0
        for _ in range(n):
            if self.position == self.trainer.n_steps:
                self.trainer.start_epoch()
                self.position = 0
            self.trainer.run_step(self.position)
            events += int(self.active[self.position])
            self.position += 1
        return events

    def seek(self, position: int) -> None:
        """Continue at step `position` of the epoch (the end of an epoch holds the masked steps)."""
        self.position = position
        self.trainer.cursor.fill_(position)

    def timed(self, seconds: float) -> dict[str, float]:
        """Steps for about `seconds`; minibatches/s and events/s, the device synchronised at both ends."""
        device = self.trainer.device
        sync(device)
        start = time.perf_counter()
        steps = events = 0
        while time.perf_counter() - start < seconds:
            events += self.run(CHUNK)
            steps += CHUNK
        sync(device)
        elapsed = time.perf_counter() - start
        return {"steps": steps, "mb/s": steps / elapsed, "events/s": events / elapsed}


class Context:
    """The run's device, plan, data (generated once, on first use) and clock."""

    def __init__(self, device: torch.device, plan: Plan, start: float, seconds: float):
        self.device = device
        self.plan = plan
        self.start = start
        self.end = start + seconds
        self.cuda = device.type == "cuda"
        self.threads = 1 if plan.tiny else None  # one thread: the quick run is exact and light
        self.store_size = 1 << 17 if plan.tiny else DEFAULT_STORE_SIZE  # a tiny run's store fills at once

    def log(self, message: str) -> None:
        log(self.start, message)

    @cached_property
    def rsc15(self) -> tuple[SessionData, SessionData]:
        return rsc15_like(self.plan)

    @cached_property
    def mid(self) -> Catalogue:
        return catalogue(f"{self.plan.mid_items:,}-item catalogue", self.plan.mid_items, self.plan.mid_events,
                         self.plan.eval_events)

    @cached_property
    def big(self) -> Catalogue:
        return catalogue(f"{self.plan.big_items:,}-item catalogue", self.plan.big_items, self.plan.big_events,
                         self.plan.eval_events)

    def trainer(self, config: Config, data: SessionData, device: torch.device | None = None,
                cuda_graphs: bool | None = None) -> Trainer:
        return Trainer(config, data, device=device or self.device, store_size=self.store_size,
                       cuda_graphs=cuda_graphs, threads=self.threads)


# ---- data -------------------------------------------------------------------------------------------------------

def part_data(ctx: Context, part: Part, deadline: float) -> None:
    """Generate every dataset up front, so that the parts' times are their own."""
    train, test = ctx.rsc15
    part.rows.append({"data": "rsc15-like", "items": train.n_items, "events": train.n_events,
                      "sessions": train.n_sessions, "test events": test.n_events})
    for cat in (ctx.mid, ctx.big):
        part.rows.append({"data": cat.name, "items": cat.train.n_items, "events": cat.train.n_events,
                          "sessions": cat.train.n_sessions, "test events": cat.test.n_events})
    part.notes.append("all generated by gru4rec.datasets.synthetic: the rsc15-like data stands in for rsc15_100k "
                      "(../shared is not on the device); the catalogues have a flat popularity curve (Zipf 0.6) and "
                      "an item map of the whole catalogue, items absent from the events included")


# ---- trials per device ------------------------------------------------------------------------------------------

def wait_for(path: Path, seconds: float, workers: tuple[subprocess.Popen, ...] = ()) -> Path:
    """Poll until `path` exists; fail on a worker that ended or when `seconds` pass."""
    end = time.monotonic() + seconds
    while not path.exists():
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"a trial worker ended with code {worker.returncode} before {path.name}")
        if time.monotonic() > end:
            raise TimeoutError(f"no {path.name} within {seconds:.0f} s")
        time.sleep(0.002)
    return path


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def trial_worker(directory: Path, index: int) -> None:
    """A training process of the packing test: warm up, say ready, then train in the rounds it is named in.

    Round r starts when the file go-r appears, holding the indices that train in it (null: stop); each
    trains for the spec's seconds and writes result-r-i.json.
    """
    spec = json.loads((directory / "spec.json").read_text())
    plan = QUICK if spec["quick"] else Plan()
    torch.set_num_threads(1)
    ctx = Context(torch.device(spec["device"]), plan, time.monotonic(), float("inf"))
    with float32_init():
        stepper = Stepper(ctx.trainer(config_of(HEADLINE, plan), ctx.rsc15[0]))
    stepper.run(WARMUP_STEPS)
    sync(ctx.device)
    (directory / f"ready-{index}").touch()
    for round_ in range(len(plan.trial_counts) + 2):
        members = json.loads(wait_for(directory / f"go-{round_}", 600).read_text())
        if members is None:
            return
        if index in members:
            write_atomic(directory / f"result-{round_}-{index}.json", json.dumps(stepper.timed(spec["seconds"])))


class TrialPool:
    """Worker processes training the headline setting on the device, run in rounds of 1, 2, 4 ... at once."""

    def __init__(self, ctx: Context, n: int, env: dict[str, str], directory: Path, deadline: float):
        self.directory = directory
        self.rounds = 0
        self.deadline = deadline
        spec = {"device": ctx.device.type, "quick": ctx.plan.tiny, "seconds": ctx.plan.trial_seconds}
        (directory / "spec.json").write_text(json.dumps(spec))
        self.logs = [open(directory / f"worker-{i}.log", "w") for i in range(n)]
        self.workers = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(directory),
                                          "--index", str(i)], env=env, stdout=log_file, stderr=subprocess.STDOUT)
                        for i, log_file in enumerate(self.logs)]

    def wait_ready(self) -> None:
        for i in range(len(self.workers)):
            wait_for(self.directory / f"ready-{i}", max(1.0, self.deadline - time.monotonic()), tuple(self.workers))

    def round(self, members: list[int]) -> list[dict[str, float]]:
        """Train with `members` at once; each one's figures."""
        write_atomic(self.directory / f"go-{self.rounds}", json.dumps(members))
        wait = max(1.0, self.deadline - time.monotonic())
        results = [json.loads(wait_for(self.directory / f"result-{self.rounds}-{i}.json", wait,
                                       tuple(self.workers)).read_text()) for i in members]
        self.rounds += 1
        return results

    def close(self) -> None:
        """Tell the workers to stop, also any still in a round; end those that do not within 10 s."""
        for round_ in range(self.rounds, self.rounds + 2):
            write_atomic(self.directory / f"go-{round_}", "null")
        end = time.monotonic() + 10
        for worker in self.workers:
            try:
                worker.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for log_file in self.logs:
            log_file.close()

    def log_tail(self) -> str:
        return "\n".join((self.directory / f"worker-{i}.log").read_text()[-600:] for i in range(len(self.workers)))


@contextmanager
def trial_pool(ctx: Context, n: int, env: dict[str, str], directory: Path, deadline: float) -> Iterator[TrialPool]:
    """`n` workers, ready to train; stopped afterwards, their logs in the error of a failure."""
    pool = TrialPool(ctx, n, env, directory, deadline)
    try:
        pool.wait_ready()
        yield pool
    except Exception as error:
        raise RuntimeError(f"{error}\n--- worker logs ---\n{pool.log_tail()}") from error
    finally:
        pool.close()


def packing(ctx: Context, part: Part, label: str, env: dict[str, str], deadline: float) -> None:
    """Rounds of 1, 2, 4 ... trainers on the device: summed events/s and each trainer's slowdown."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-trials-") as directory, \
            trial_pool(ctx, max(ctx.plan.trial_counts), env, Path(directory), deadline) as pool:
        single = None
        for n in ctx.plan.trial_counts:
            if time.monotonic() > deadline:
                part.notes.append(f"{label}: stopped at the part's time limit before {n} trainers")
                break
            results = pool.round(list(range(n)))
            rates = [r["events/s"] for r in results]
            single = single or rates[0]
            part.rows.append({"sharing": label, "trainers": n, "summed events/s": sum(rates),
                              "vs one trainer": sum(rates) / single,
                              "slowdown (each)": " / ".join(f"{single / rate:.2f}" for rate in rates),
                              "mb/s (each, mean)": float(np.mean([r["mb/s"] for r in results]))})
            ctx.log(f"  {label}: {n} trainer(s), {sum(rates):,.0f} events/s together")


@contextmanager
def mps_daemon(directory: Path) -> Iterator[dict[str, str] | None]:
    """NVIDIA MPS started for the block (its pipes in `directory`), the environment its clients need; None
    where it cannot be started. It is stopped afterwards; the parent process is never one of its clients."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        yield None
        return
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(directory / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(directory / "log")}
    (directory / "pipe").mkdir()
    (directory / "log").mkdir()
    try:
        started = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        started = False
    if not started:
        yield None
        return
    try:
        yield env
    finally:
        try:
            subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True, timeout=30)
        except subprocess.SubprocessError as error:
            print(f"warning: the MPS daemon did not quit: {error}", flush=True)


def part_trials(ctx: Context, part: Part, deadline: float) -> None:
    """Trials per device: 1, 2, 4, 8 trainer processes on the one device, without MPS and with it."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    plain_deadline = deadline if not ctx.cuda else time.monotonic() + (deadline - time.monotonic()) / 2
    packing(ctx, part, "time-sliced", env, plain_deadline)
    if not ctx.cuda:
        part.notes.append("MPS: not tried (CPU run)")
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-check-mps-") as directory, mps_daemon(Path(directory)) as mps:
            if mps is None:
                part.notes.append("MPS: skipped, nvidia-cuda-mps-control is absent or could not start its daemon")
            else:
                try:
                    packing(ctx, part, "MPS", {**mps, "PYTHONPATH": path}, deadline)
                except Exception as error:  # noqa: BLE001 - MPS is optional: its failure is a finding
                    part.notes.append(f"MPS: failed: {str(error)[-1500:]}")
    best = max(part.rows, key=lambda row: row["summed events/s"])
    verdict = "PASS" if best["vs one trainer"] >= PACKING_TARGET else "FAIL"
    part.verdicts.append(f"best packing: {best['trainers']} trainers, {best['sharing']}: "
                         f"{best['vs one trainer']:.2f}x one trainer's events/s (target >= {PACKING_TARGET:g}x): "
                         f"{verdict if ctx.cuda else 'n/a on the CPU'}")
    part.notes.append(f"each trainer: the headline setting on the rsc15-like data, {ctx.plan.trial_seconds:g} s "
                      "timed after its warm-up, all started together; slowdown = one trainer alone / this one")


# ---- parity ------------------------------------------------------------------------------------------------------

def train_and_evaluate(ctx: Context, config: Config, device: torch.device) -> tuple[GRU4Rec, EvalResult]:
    train, test = ctx.rsc15
    trainer = ctx.trainer(config, train, device)
    trainer.fit(ctx.plan.parity_epochs)
    return trainer.model, evaluate(trainer.model, test, (20,))


def parity_row(loss: str, mode: str, compared: str, reference: EvalResult, other: EvalResult,
               judged: bool = True) -> dict[str, Any]:
    recall, mrr = relative(other.recall[20], reference.recall[20]), relative(other.mrr[20], reference.mrr[20])
    verdict = ("PASS" if max(recall, mrr) <= PARITY_TOLERANCE else "FAIL") if judged else "reference"
    return {"loss": loss, "mode": mode, "compared": compared, "R@20 cpu": reference.recall[20],
            "R@20 other": other.recall[20], "R@20 rel diff": recall, "MRR@20 cpu": reference.mrr[20],
            "MRR@20 other": other.mrr[20], "MRR@20 rel diff": mrr, "verdict": verdict}


def part_parity(ctx: Context, part: Part, deadline: float) -> None:
    """The same config and seed trained on the CPU and on the device (without and with TF32) for 2 epochs."""
    if ctx.cuda:
        part.notes.append(f"device: {torch.cuda.get_device_name(ctx.device)}, CUDA {torch.version.cuda}")
    variants = [("cuda vs cpu", False), ("cuda+tf32 vs cpu", True)] if ctx.cuda else [("cpu vs cpu", False)]
    references: dict[tuple[str, str], tuple[Config, EvalResult]] = {}
    cases = [(loss, setting, mode) for loss, setting in (("cross-entropy", HEADLINE), ("bpr-max", BPR_MAX))
             for mode in ("shared", "none")]
    for loss, setting, mode in cases:
        if time.monotonic() > deadline:
            part.notes.append(f"stopped at the part's time limit before {loss}/{mode}")
            break
        config = config_of(setting, ctx.plan, **MODES[mode])
        model, reference = train_and_evaluate(ctx, config, torch.device("cpu"))
        references[loss, mode] = config, reference
        for compared, use_tf32 in variants:
            with tf32(use_tf32):
                other = train_and_evaluate(ctx, config, ctx.device)[1]
            part.rows.append(parity_row(loss, mode, compared, reference, other))
        twin = GRU4Rec(config, model.n_items).to(ctx.device)
        twin.load_state_dict(model.state_dict())
        part.rows.append(parity_row(loss, mode, "cpu model evaluated on the device", reference,
                                    evaluate(twin, ctx.rsc15[1], (20,))))
        done = part.rows[-len(variants) - 1:]
        ctx.log(f"  {loss}/{mode}: " + ", ".join(f"{row['compared']} {row['verdict']}" for row in done))
        settle(ctx.device)
    for (loss, mode), (config, reference) in references.items():  # what two seeds differ by, while time lasts
        if time.monotonic() > deadline:
            part.notes.append("seed spread: stopped at the part's time limit")
            break
        other = train_and_evaluate(ctx, dataclasses.replace(config, seed=config.seed + 1), torch.device("cpu"))[1]
        part.rows.append(parity_row(loss, mode, "cpu seed+1 vs cpu (spread)", reference, other, judged=False))
    for compared, _ in variants:
        rows = [row for row in part.rows if row["compared"] == compared]
        passed = sum(row["verdict"] == "PASS" for row in rows)
        part.verdicts.append(f"{compared}: Recall@20 and MRR@20 within {PARITY_TOLERANCE:.0%} in {passed} of "
                             f"{len(rows)} configs: {'PASS' if rows and passed == len(rows) else 'FAIL'}")
    part.notes.append(f"{ctx.plan.parity_epochs} epochs on the rsc15-like data, seed {Config().seed}; CPU and CUDA "
                      "draw different random streams (samples, dropout), so the device runs agree statistically; the "
                      "'spread' rows show what a change of seed alone does")


# ---- graphs against eager ----------------------------------------------------------------------------------------

def stepped_state(ctx: Context, config: Config, graphs: bool) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss sum and weights after the plan's steps (the last few at the end of the epoch, masked), and the
    device memory still allocated once the trainer is dropped and its memory freed."""
    trainer = ctx.trainer(config, ctx.rsc15[0], cuda_graphs=graphs)
    stepper = Stepper(trainer)
    tail = min(20, trainer.n_steps // 4)
    stepper.run(ctx.plan.graph_steps - tail)
    stepper.seek(trainer.n_steps - tail)
    stepper.run(tail)
    loss_sum = trainer.loss_sum.item()
    weights = {name: tensor.detach().cpu().clone() for name, tensor in trainer.model.state_dict().items()}
    del trainer, stepper
    settle(ctx.device)
    return loss_sum, weights, allocated(ctx.device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def reserved(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


def part_graphs(ctx: Context, part: Part, deadline: float) -> None:
    """The captured steps against eager steps on the device: loss sums and weights after the same steps."""
    for name, setting in (("cross-entropy headline", HEADLINE), ("bpr-max", BPR_MAX)):
        if time.monotonic() > deadline:
            part.notes.append(f"stopped at the part's time limit before {name}")
            break
        config = config_of(setting, ctx.plan)
        settle(ctx.device)
        before, before_reserved = allocated(ctx.device), reserved(ctx.device)
        graph_sum, graph_weights, after = stepped_state(ctx, config, ctx.cuda)
        after_reserved = reserved(ctx.device)
        eager_sum, eager_weights, _ = stepped_state(ctx, config, False)
        scale = max(float(w.abs().max()) for w in eager_weights.values())
        diff = max(float((graph_weights[k] - w).abs().max()) for k, w in eager_weights.items()) / scale
        loss_diff = relative(graph_sum, eager_sum)
        released = after - before <= RELEASE_SLACK and after_reserved - before_reserved <= RELEASE_SLACK
        part.rows.append({"setting": name, "compared": "graph vs eager" if ctx.cuda else "eager vs eager (CPU)",
                          "steps": ctx.plan.graph_steps, "loss sum graph": graph_sum, "loss sum eager": eager_sum,
                          "loss rel diff": loss_diff, "max weight diff / max |w|": diff,
                          "MB left allocated": (after - before) / 2**20,
                          "MB left reserved": (after_reserved - before_reserved) / 2**20,
                          "verdict": "PASS" if loss_diff <= LOSS_SUM_TOLERANCE and diff <= WEIGHT_TOLERANCE
                          and released else "FAIL"})
        ctx.log(f"  {name}: loss rel diff {loss_diff:.2e}, weights {diff:.2e}, released {released}")
    part.verdicts.append(f"tolerances: loss sums within {LOSS_SUM_TOLERANCE:g} relative, weights within "
                         f"{WEIGHT_TOLERANCE:g} of the largest |w|, and a dropped trainer leaves at most "
                         f"{RELEASE_SLACK >> 20} MB allocated or reserved: "
                         f"{'PASS' if all(r['verdict'] == 'PASS' for r in part.rows) else 'FAIL'}")
    part.notes.append("the last steps of each run are the epoch's last (masked) ones, so both captured steps are "
                      "compared; the same seed and device for both")


# ---- speed --------------------------------------------------------------------------------------------------------

def part_speed(ctx: Context, part: Part, deadline: float) -> None:
    """Minibatches/s and events/s per setting, graphs on and off, on the rsc15-like data and the 1M catalogue."""
    for data_name, data in (("rsc15-like", ctx.rsc15[0]), (ctx.big.name, ctx.big.train)):
        for setting_name, setting in SPEED_SETTINGS.items():
            for graphs in ((True, False) if ctx.cuda else (False,)):
                if time.monotonic() > deadline:
                    part.notes.append(f"stopped at the part's time limit before {data_name}, {setting_name}")
                    return finish_speed(ctx, part)
                with float32_init():
                    stepper = Stepper(ctx.trainer(config_of(setting, ctx.plan), data, cuda_graphs=graphs))
                stepper.run(WARMUP_STEPS)
                figures = stepper.timed(ctx.plan.speed_seconds)
                part.rows.append({"data": data_name, "items": data.n_items, "setting": setting_name,
                                  "graphs": "on" if graphs else "off", **figures})
                ctx.log(f"  {data_name}, {setting_name}, graphs {'on' if graphs else 'off'}: "
                        f"{figures['mb/s']:,.0f} mb/s")
                del stepper
                settle(ctx.device)
    finish_speed(ctx, part)


def finish_speed(ctx: Context, part: Part) -> None:
    headline = [row for row in part.rows if row["data"] == "rsc15-like" and "headline" in row["setting"]
                and row["graphs"] == ("on" if ctx.cuda else "off")]
    if headline:
        rate = headline[0]["mb/s"]
        verdict = ("PASS" if rate >= HEADLINE_TARGET else "FAIL") if ctx.cuda else "n/a on the CPU"
        part.verdicts.append(f"headline (cross-entropy, batch 32, layers 100, n_sample 2048, graphs on): "
                             f"{rate:,.0f} minibatches/s (target >= {HEADLINE_TARGET:,.0f}): {verdict}")
    part.notes.append(f"each figure: {ctx.plan.speed_seconds:g} s of steps after {WARMUP_STEPS} warm-up steps; "
                      "tables drawn in float32 (values do not change the speed)")


# ---- evaluation ---------------------------------------------------------------------------------------------------

def part_evaluation(ctx: Context, part: Part, deadline: float) -> None:
    """Predictions/s of the evaluation (512 slots, every item ranked) at 3k, 37.5k and 1M items."""
    sets = [("rsc15-like", ctx.rsc15[1]), (ctx.mid.name, ctx.mid.test), (ctx.big.name, ctx.big.test)]
    for name, test in sets:
        with float32_init():
            model = GRU4Rec(config_of("layers=100", ctx.plan), test.n_items).to(ctx.device)
        for graphs in ((True, False) if ctx.cuda else (False,)):
            if time.monotonic() > deadline:
                part.notes.append(f"stopped at the part's time limit before {name}")
                return
            n = evaluate(model, test, cuda_graphs=graphs).n  # warm-up, and the capture
            sync(ctx.device)
            start = time.perf_counter()
            for _ in range(ctx.plan.eval_repeats):
                evaluate(model, test, cutoffs=(1, 5, 10, 20), cuda_graphs=graphs)
            sync(ctx.device)
            seconds = (time.perf_counter() - start) / ctx.plan.eval_repeats
            part.rows.append({"data": name, "items": test.n_items, "graphs": "on" if graphs else "off",
                              "predictions": n, "predictions/s": n / seconds,
                              "rows scored at once": max(1, score_budget(ctx.device) // test.n_items)})
            ctx.log(f"  {name}, graphs {'on' if graphs else 'off'}: {n / seconds:,.0f} predictions/s")
        del model
        settle(ctx.device)
    part.notes.append(f"layers 100, mean of {ctx.plan.eval_repeats} evaluations after a warm-up one")


# ---- memory -------------------------------------------------------------------------------------------------------

def largest_config(space: Path, mode: str, plan: Plan) -> Config:
    """The top of every range of a study space (first option of a categorical), with the study's fixed
    settings: its loss, the embedding of `mode`, n_sample 2048, logq 1 for cross-entropy."""
    loss = SPACE_LOSSES[space.stem]
    params = {"loss": loss, "n_sample": "2048", "logq": "1.0" if loss == "cross-entropy" else "0.0", **MODES[mode]}
    for line in space.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            values = entry["values"]
            params[entry["name"]] = str(values[-1] if entry["dtype"] in ("int", "float") else values[0])
    return config_of(",".join(f"{k}={v}" for k, v in params.items()), plan)


def resident_peak_reset() -> None:
    """Reset the process's peak resident memory (VmHWM) to what it holds now (Linux clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def proc_status(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key)) * 1024


@contextmanager
def peak_memory(device: torch.device, base: int, into: dict[str, int], key: str) -> Iterator[None]:
    """The block's peak memory above `base`: device memory on CUDA (max_memory_allocated), else resident."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        resident_peak_reset()
    yield
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else proc_status("VmHWM")
    into[key] = peak - base
    if device.type == "cuda":
        into[f"{key} reserved"] = torch.cuda.max_memory_reserved(device)


def trial_peak(ctx: Context, config: Config, cat: Catalogue) -> dict[str, int]:
    """What a trial does, memory-wise: build, steps at both ends of an epoch (both graphs), evaluate."""
    settle(ctx.device)
    base = allocated(ctx.device) if ctx.cuda else proc_status("VmRSS")
    peaks: dict[str, int] = {}
    with peak_memory(ctx.device, base, peaks, "train"):
        with float32_init():
            stepper = Stepper(ctx.trainer(config, cat.train))
        stepper.run(ctx.plan.memory_steps)
        stepper.seek(stepper.trainer.n_steps - ctx.plan.memory_steps)
        stepper.run(ctx.plan.memory_steps)
        sync(ctx.device)
    with peak_memory(ctx.device, base, peaks, "evaluation"):
        evaluate(stepper.trainer.model, cat.test)
        sync(ctx.device)
    del stepper
    return peaks


def memory_model() -> Callable[..., Any] | None:
    """`gru4rec.memory.trial_memory`, where this checkout has it."""
    try:
        from gru4rec.memory import trial_memory
    except ImportError:
        return None
    return trial_memory


def modelled(model: Callable[..., Any] | None, config: Config, cat: Catalogue, device: torch.device,
             part: Part) -> Any:
    """The model's estimate for this trial; None without a model, or with a note where it fails."""
    if model is None:
        return None
    data = cat.train
    try:
        return model(config, data.n_items, data.n_events, data.n_sessions, device=device.type)
    except Exception as error:  # noqa: BLE001 - a model still being written: its error is a finding
        part.notes.append(f"trial_memory failed for {cat.name}, {config.loss}/{config.embedding_mode}: {error!r}")
        return None


def memory_row(ctx: Context, peaks: dict[str, int], estimate: Any) -> dict[str, Any]:
    """Measured peaks, the model's total (and its CUDA context, which the allocator's counters leave out)."""
    peak = max(peaks.get("train", 0), peaks.get("evaluation", 0))
    total = float(estimate.total) if estimate is not None else None
    ratio = peak / total if total and peaks else None
    judged = ratio is not None and ctx.cuda
    return {"train peak MB": peaks.get("train", 0) / 2**20, "eval peak MB": peaks.get("evaluation", 0) / 2**20,
            "peak MB": peak / 2**20,
            "peak reserved MB": max(peaks.get("train reserved", 0), peaks.get("evaluation reserved", 0)) / 2**20,
            "model MB": total / 2**20 if total else None,
            "model context MB": getattr(estimate, "context", 0) / 2**20 if estimate is not None else None,
            "peak / model": ratio,
            "verdict": ("PASS" if abs(ratio - 1) <= MEMORY_TOLERANCE else "FAIL") if judged else "n/a"}


def part_memory(ctx: Context, part: Part, deadline: float) -> None:
    """Peak memory of a trial at the largest config of each study space, against the memory model."""
    model = memory_model()
    if model is None:
        part.notes.append("gru4rec.memory is not in this checkout: measured peaks only, no model to compare")
    spaces = sorted((ROOT / "spaces").glob("*.jsonl"))
    for cat in (ctx.mid, ctx.big):
        for mode in ("shared", "none", "separate"):  # the default mode, then the largest
            for space in spaces:
                if time.monotonic() > deadline:
                    part.notes.append(f"stopped at the part's time limit before {cat.name}, {space.stem}/{mode}")
                    return finish_memory(ctx, part)
                config = largest_config(space, mode, ctx.plan)
                row = {"data": cat.name, "space": space.stem, "mode": mode, "layers": config.layers[0],
                       "batch": config.batch_size, "n_sample": config.n_sample}
                try:
                    peaks = trial_peak(ctx, config, cat)
                except torch.cuda.OutOfMemoryError:
                    peaks, row["status"] = {}, "OOM"
                else:
                    row["status"] = "ok"
                settle(ctx.device)
                row.update(memory_row(ctx, peaks, modelled(model, config, cat, ctx.device, part)))
                part.rows.append(row)
                ctx.log(f"  {cat.name}, {space.stem}/{mode}: {row['status']}, peak {row['peak MB']:,.0f} MB")
    finish_memory(ctx, part)


def finish_memory(ctx: Context, part: Part) -> None:
    judged = [row for row in part.rows if row["verdict"] in ("PASS", "FAIL")]
    if judged:
        passed = sum(row["verdict"] == "PASS" for row in judged)
        part.verdicts.append(f"memory model within {MEMORY_TOLERANCE:.0%} of the measured peak in {passed} of "
                             f"{len(judged)} configs: {'PASS' if passed == len(judged) else 'FAIL'}")
    kind = ("torch.cuda.max_memory_allocated, reset before each trial (reserved: max_memory_reserved)"
            if ctx.cuda else "peak resident memory above the process's before the trial (Linux VmHWM, reset by "
            "clear_refs); not judged: the quick run's sample store is smaller than the model assumes")
    part.notes.append(f"largest config of each space in spaces/ (top of each range) per embedding mode; "
                      f"{ctx.plan.memory_steps} steps at each end of an epoch and an evaluation of the test events "
                      f"(no checkpoint is saved); peaks: {kind}")


# ---- the run ------------------------------------------------------------------------------------------------------

# Trials come last: MPS is started only then, while this process, not its client, sits idle on the device.
PARTS: dict[str, Callable[[Context, Part, float], None]] = {
    "data": part_data, "parity": part_parity, "graphs": part_graphs, "speed": part_speed,
    "evaluation": part_evaluation, "memory": part_memory, "trials": part_trials}


def run_part(ctx: Context, name: str, report: Report) -> None:
    """One part within its limit and the run's; its failure is recorded, not raised."""
    part = Part(name)
    left = ctx.end - time.monotonic()
    if left < 5:
        part.status, part.error = "skipped", "the run's time budget was spent"
        report.add(part)
        return
    limit = min(ctx.plan.seconds[name], left)
    ctx.log(f"{name}: up to {limit:.0f} s")
    start = time.monotonic()
    try:
        with alarm(limit + GRACE):
            PARTS[name](ctx, part, start + limit)
        part.status = "ok"
    except Exception:  # noqa: BLE001 - a failed part is reported and the next one runs
        part.status, part.error = "failed", traceback.format_exc()
    part.seconds = time.monotonic() - start
    ctx.log(f"{name}: {part.status} in {part.seconds:.0f} s")
    settle(ctx.device)
    report.add(part)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny data and configs: the code paths in seconds")
    p.add_argument("--seconds", type=float, default=450.0, help="the whole run's budget (default: 450)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        trial_worker(args.worker, args.index)
        return
    if args.out is None:
        p.error("--out DIR is required")
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --device cpu --quick for the code paths")
    plan = QUICK if args.quick else Plan()
    if plan.tiny:
        torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the quick run stays light
    start = time.monotonic()
    ctx = Context(device, plan, start, args.seconds)
    header = {**environment(torch.device("cpu")), "device": str(device), "plan": "quick" if args.quick else "full",
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budget s": args.seconds,
              "data": "generated, rsc15-like (~100k events / 3k items) and catalogues of 37.5k and 1M items"
              if not args.quick else "generated, tiny"}
    report = Report(args.out, header)
    ctx.log(f"GPU check on {device} ({header['plan']}), writing to {args.out}")
    for name in PARTS:
        if name in args.parts.split(","):
            run_part(ctx, name, report)
    if ctx.cuda:
        report.header.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                             gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    report.header["finished after s"] = round(time.monotonic() - start, 1)
    report.write()
    ctx.log(f"done: {', '.join(f'{p.name} {p.status}' for p in report.parts)}")


if __name__ == "__main__":
    main()
