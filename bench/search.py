"""The search engine at cluster concurrency on a small machine: the platform's own Tune + Optuna + ASHA
machinery, with trials that answer from a surrogate of real learning curves.

Two engines run the concurrency sweep (--engine):
- tune: Ray Tune itself, with trials that sleep a scaled epoch time (--scale): the whole platform, Ray's
  overheads included, at 50-80 s of wall time per 100-trial search;
- virtual: the same searcher and scheduler objects, driven by a discrete-event simulation in one process
  (bench/virtual.py): no Ray, no sleeping, a second or two per search. Its wall time is the virtual clock in the
  recorded (unscaled) seconds, --scale does not apply, and it also measures the scheduler's own time per
  reported epoch (its decision overhead).
The studies and warm-start experiments always run on Tune.

    .venv/bin/python bench/record_curves.py     # once: the real curves (bench/data/curves.parquet)
    .venv/bin/python bench/search.py            # the benchmark: tables, plots in bench/figures/, JSON
    .venv/bin/python bench/search.py --quick    # a small end-to-end run
    .venv/bin/python bench/search.py --engine virtual --trials 200   # the concurrency sweep, simulated
    .venv/bin/python bench/search.py --log bench/results/search-X.jsonl   # resume a run killed half-way

Every finished search is appended to the run's log (JSON lines) at once; a run given an existing log skips
the settings it holds (those of its engine: a record without one is Tune's), and the tables and plots are made
from the whole log.

Experiments (each repeated with different seeds, but the first):
- landscape: the recorded pool (best, configs that blew up, Spearman rho between the MRR@20 after early
  epochs and the final one) and how rare near-best configs are in the surrogate (shares of uniformly drawn
  configs within 1, 2, 3 and 5% of the pool's best final MRR@20);
- concurrency: the platform (TPE with constant liar, multivariate, start-up trials = max(10, concurrency),
  and ASHA), TPE as Optuna 4 makes it by default (no liar, independent, 10 start-up trials) and ASHA, random
  search and ASHA, TPE at full budget (no early stopping, the official paropt way), and the platform's TPE with
  calibrated or predicted early stopping (search/calibration.py), at 1, 8, 32 and 64 trials in flight;
- studies: six studies on one set of slots, sharing them, one after another in one experiment, and
  one experiment after another (the previous platform);
- warm start: the published best configs first, and the top configs of an earlier search of half the trials
  (another seed) first, against a cold start.
Reported: regret (the pool's best final MRR@20 minus the best final MRR@20 of a config the search ran to its
last epoch, relative), epochs used against a full-budget search of the same trial count, wall time,
utilisation (busy slot-seconds over available slot-seconds), the platform's overhead per trial, and (virtual
engine) the scheduler's decision time per reported epoch.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# This file's name is that of the platform's package: import the package first, then the bench's modules.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import CheckpointConfig, RunConfig, TuneConfig, Tuner  # noqa: E402
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402

from search.ledger import METRIC  # noqa: E402
from search.spaces import load_space, plan_study, default_space_file  # noqa: E402
from search.study import KEEP_CHECKPOINTS, TUNE_ENVIRONMENT, snapshot_period, tpe_sampler  # noqa: E402
from search.trainable import MODE  # noqa: E402
from search.tune_ext import EPOCH, STUDY_KEY, CheckpointJanitor, DurableOptunaSearch, StudyASHA, StudyMux  # noqa: E402
from search.warmstart import TOP_OF_EARLIER_SEARCH, warm_configs  # noqa: E402

sys.path.append(str(HERE))
import surrogate as surrogate_module  # noqa: E402
from record_curves import sample_uniform  # noqa: E402
from surrogate import Surrogate  # noqa: E402
from virtual import run_virtual  # noqa: E402

CURVES = HERE / "data" / "curves.parquet"
POOLS = {"rsc15 xe": ("rsc15_100k", "xe_shared", "cross-entropy"),
         "rsc15 bpr-max": ("rsc15_100k", "bprmax_shared", "bpr-max"),
         "globo xe": ("globo_g1", "xe_shared", "cross-entropy")}
# Each method of the concurrency sweep and its early stopping: StudyASHA's kind, or None for none (FIFO).
EARLY_STOPPING: dict[str, str | None] = {"platform": "asha", "tpe 4.x defaults + asha": "asha",
                                         "random + asha": "asha", "tpe full budget": None,
                                         "calibrated": "calibrated", "predicted": "predicted"}
METHODS = tuple(EARLY_STOPPING)
ENGINES = ("tune", "virtual")
LOSSES = {"xe": "cross-entropy", "bprmax": "bpr-max"}  # a study's first token names its loss
GRACE, REDUCTION = 1, 3  # the platform's ASHA defaults


def pool_key(label: str) -> tuple[str, str, str]:
    """(dataset, study, loss) of a pool: a name of POOLS, or DATASET:STUDY of any recorded pool."""
    if label in POOLS:
        return POOLS[label]
    dataset, _, study = label.partition(":")
    if not study or study.split("_")[0] not in LOSSES:
        raise SystemExit(f"--pools {label}: use one of {', '.join(POOLS)} or DATASET:STUDY (a study such as "
                         "xe_separate or bprmax_none)")
    return dataset, study, LOSSES[study.split("_")[0]]


def surrogates(curves_path: Path, labels: list[str]) -> dict[str, Surrogate]:
    """The surrogate of each pool with 8 or more recorded configs in the curves file."""
    import pandas as pd
    curves = pd.read_parquet(curves_path)
    found = {}
    for label in labels:
        dataset, study, loss = pool_key(label)
        pool = curves[(curves["dataset"] == dataset) & (curves["study"] == study)]
        if pool["config_id"].nunique() >= 8:
            found[label] = Surrogate(pool, load_space(default_space_file(loss)))
    return found


def simulated_trial(config: dict[str, Any], pools: dict[str, Surrogate], scale: float, checkpoint_kb: int) -> None:
    """A trial of the surrogate: per epoch, sleep the scaled recorded time, save a small checkpoint, report."""
    pool = pools[config[STUDY_KEY]]
    params = {k: v for k, v in config.items() if k != STUDY_KEY}
    mrr, seconds, diverged = pool.curve(params)
    begin = time.time()
    start = tune.get_checkpoint()
    first = 0
    if start is not None:
        with start.as_directory() as directory:
            first = int((Path(directory) / "epoch").read_text())
    for epoch in range(first, pool.epochs):
        time.sleep(seconds[epoch] * scale)
        if diverged and epoch + 1 >= diverged:
            tune.report({METRIC: 0.0, "epoch": epoch + 1, "diverged": 1, "t_begin": begin, "t_now": time.time()})
            return
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "epoch").write_text(str(epoch + 1))
            (Path(directory) / "state").write_bytes(b"\0" * (checkpoint_kb << 10))
            tune.report({METRIC: float(mrr[epoch]), "epoch": epoch + 1, "t_begin": begin, "t_now": time.time()},
                        checkpoint=tune.Checkpoint.from_directory(directory))


@dataclass
class Outcome:
    """One simulated search."""

    method: str
    concurrency: int
    seed: int
    trials: int
    regret: float  # relative to the pool's best final MRR@20
    epochs: int
    wall_s: float
    busy_s: float
    slots: int
    order: list[float] = field(default_factory=list)  # true final MRR of complete trials, in asking order
    steady: float = 0.0  # utilisation once every slot had started its first trial (actor start-up excluded)
    decision_ms: float = math.nan  # the scheduler's time per reported epoch (virtual engine only)

    @property
    def utilisation(self) -> float:
        return self.busy_s / (self.slots * self.wall_s)

    @property
    def overhead_s(self) -> float:
        """Slot-seconds per trial not spent training: scheduling, checkpoints, reports, idle tails."""
        return (self.slots * self.wall_s - self.busy_s) / self.trials


def sampler_for(method: str, seed: int, concurrency: int) -> optuna.samplers.BaseSampler:
    if method == "random + asha":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "tpe 4.x defaults + asha":  # what TPESampler(seed=...) is on Optuna 4, which pyproject allows
        return optuna.samplers.TPESampler(seed=seed, multivariate=False, constant_liar=False, n_startup_trials=10)
    return tpe_sampler(seed, concurrency)


def scheduler_for(method: str, epochs: int) -> TrialScheduler:
    """The method's scheduler, built as the platform builds it: FIFO without early stopping, else StudyASHA."""
    kind = EARLY_STOPPING[method]
    if kind is None:
        return FIFOScheduler()
    return StudyASHA(kind, time_attr=EPOCH, metric=METRIC, mode=MODE, max_t=epochs, grace_period=GRACE,
                     reduction_factor=REDUCTION)


def run_tuner(studies: dict[str, tuple[Surrogate, str]], method: str, concurrency: int, seed: int, trials: int,
              scale: float, policy: str = "shared", warm: dict[str, list] | None = None,
              checkpoint_kb: int = 64) -> tuple[float, list[Any], dict[str, DurableOptunaSearch]]:
    """One Tune experiment over the given studies, built like the platform's; returns wall, results, searchers."""
    searchers = {name: DurableOptunaSearch(pool.space, metric=METRIC, mode=MODE,
                                           sampler=sampler_for(method, seed + i, concurrency),
                                           points_to_evaluate=(warm or {}).get(name), n_epochs=pool.epochs,
                                           experiment=name)
                 for i, (name, (pool, _)) in enumerate(studies.items())}
    mux = StudyMux(searchers, {name: trials for name in studies}, policy, METRIC, MODE)
    scheduler = scheduler_for(method, next(iter(studies.values()))[0].epochs)
    trainable = tune.with_resources(tune.with_parameters(
        simulated_trial, pools={name: pool for name, (pool, _) in studies.items()}, scale=scale,
        checkpoint_kb=checkpoint_kb), {"cpu": 1})
    with tempfile.TemporaryDirectory(prefix="gru4rec-bench-") as storage:
        tuner = Tuner(trainable, tune_config=TuneConfig(search_alg=mux, scheduler=scheduler, num_samples=-1,
                                                        max_concurrent_trials=concurrency, reuse_actors=True),
                      run_config=RunConfig(name="bench", storage_path=storage, verbose=0,
                                           checkpoint_config=CheckpointConfig(num_to_keep=None),
                                           callbacks=[CheckpointJanitor(KEEP_CHECKPOINTS)]))
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
        results = [r for r in grid]
    return wall, results, searchers


def busy_spans(results: list[Any]) -> list[tuple[float, float]]:
    """(start, end) wall-clock of every trial's last attempt."""
    return [(r.metrics["t_begin"], r.metrics["t_now"]) for r in results if "t_begin" in r.metrics]


def steady_utilisation(spans: list[tuple[float, float]], slots: int) -> float:
    """Busy slot-seconds over available ones from the moment every slot had begun a trial to the last end.

    Excludes the start of the trial actors, which a 2-core machine pays for dozens of actors at once
    (a cluster starts them on many nodes in parallel, in a second or two).
    """
    if len(spans) < slots:
        return float("nan")
    full = sorted(start for start, _ in spans)[slots - 1]
    end = max(e for _, e in spans)
    busy = sum(max(0.0, e - max(start, full)) for start, e in spans)
    return busy / (slots * (end - full)) if end > full else float("nan")


def complete_trials(results: list[Any], pool: Surrogate) -> dict[str, dict[str, Any]]:
    """Params by trial id of the trials that ran every epoch without diverging."""
    return {r.metrics["trial_id"]: {k: v for k, v in r.config.items() if k != STUDY_KEY} for r in results
            if r.metrics.get("epoch", 0) >= pool.epochs and not r.metrics.get("diverged")}


def measure(results: list[Any], searchers: dict[str, DurableOptunaSearch], pools: dict[str, Surrogate],
            study: str) -> tuple[float, int, float, list[float]]:
    """Regret, epochs, busy seconds and the asking-order finals of one study's trials."""
    pool = pools[study]
    mine = [r for r in results if r.config.get(STUDY_KEY) == study]
    complete = {tid: pool.final(params) for tid, params in complete_trials(mine, pool).items()}
    found = max(complete.values(), default=0.0)
    epochs = sum(int(r.metrics.get("training_iteration", 0)) for r in mine)
    busy = sum(e - b for b, e in busy_spans(mine))
    order = [complete.get(tid, float("nan")) for tid in searchers[study]._ot_trials]
    return (pool.best_final - found) / pool.best_final, epochs, busy, order


class Log:
    """The run's records, one JSON line per finished search, appended as each finishes."""

    LEGACY = {"engine": "tune"}  # what a record written before a key existed holds

    def __init__(self, path: Path):
        self.path = path
        self.records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
            if path.is_file() else []

    def find(self, **key: Any) -> dict[str, Any] | None:
        return next((r for r in self.records if all(r.get(k, self.LEGACY.get(k)) == v for k, v in key.items())),
                    None)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


def tune_search(pool: Surrogate, label: str, method: str, concurrency: int, seed: int, trials: int,
                scale: float) -> Outcome:
    """One search of the sweep on Ray Tune, its trials sleeping their scaled epoch times."""
    wall, results, searchers = run_tuner({label: (pool, "")}, method, concurrency, seed * 1000, trials, scale)
    regret, epochs, busy, order = measure(results, searchers, {label: pool}, label)
    return Outcome(method, concurrency, seed, trials, regret, epochs, wall, busy, concurrency, order,
                   steady_utilisation(busy_spans(results), concurrency))


def virtual_search(pool: Surrogate, label: str, method: str, concurrency: int, seed: int, trials: int) -> Outcome:
    """One search of the sweep on the virtual clock, seeded and built as `tune_search`'s."""
    run = run_virtual(pool, scheduler_for(method, pool.epochs), sampler_for(method, seed * 1000, concurrency),
                      concurrency, trials, study=label)
    return Outcome(method, concurrency, seed, trials, run.regret, run.epochs, run.wall_s, run.busy_s, concurrency,
                   run.order, steady_utilisation(run.spans, concurrency), 1000 * run.decision_s_per_epoch)


def concurrency_sweep(pools: dict[str, Surrogate], label: str, concurrencies: list[int], methods: list[str],
                      seeds: int, trials: int, scale: float, log: Log, engine: str = "tune") -> list[Outcome]:
    """Every method at every concurrency and seed on the given engine; settings the log holds are not rerun."""
    outcomes = []
    pool = pools[label]
    for seed in range(seeds):
        for concurrency in concurrencies:
            for method in methods:
                key = {"kind": "concurrency", "engine": engine, "pool": label, "method": method,
                       "concurrency": concurrency, "seed": seed, "trials": trials}
                if (done := log.find(**key)) is None:
                    begin = time.perf_counter()
                    o = tune_search(pool, label, method, concurrency, seed, trials, scale) if engine == "tune" \
                        else virtual_search(pool, label, method, concurrency, seed, trials)
                    log.add(key | o.__dict__)
                    decisions = "" if math.isnan(o.decision_ms) else f", decisions {o.decision_ms:.3f} ms / epoch"
                    print(f"  {label} | {method:20s} | c={concurrency:2d} seed={seed}: regret {100 * o.regret:.2f}%, "
                          f"{o.epochs} epochs, {o.wall_s:.1f} s {engine}, utilisation {o.utilisation:.2f}"
                          f"{decisions} (took {time.perf_counter() - begin:.1f} s)", flush=True)
                else:
                    o = Outcome(**{k: v for k, v in done.items() if k in Outcome.__dataclass_fields__})
                outcomes.append(o)
    return outcomes


def study_sharing(pools: dict[str, Surrogate], concurrency: int, seeds: int, trials: int,
                  scale: float, log: Log) -> list[dict[str, Any]]:
    """Six studies (the pools, twice over) on `concurrency` slots: shared, sequential, separate experiments."""
    labels = list(pools)
    six = {f"{labels[i % len(labels)]} #{i // len(labels) + 1}": (pools[labels[i % len(labels)]], "")
           for i in range(6)}
    rows = []
    for seed in range(seeds):
        for mode in ("shared", "sequential", "separate experiments"):
            key = {"kind": "studies", "mode": mode, "seed": seed, "concurrency": concurrency, "trials": trials,
                   "scale": scale}
            if (done := log.find(**key)) is not None:
                rows.append(done)
                continue
            spans: list[tuple[float, float]] = []
            start = time.perf_counter()
            if mode == "separate experiments":
                steady = []
                for name, study in six.items():
                    _, results, _ = run_tuner({name: study}, "platform", concurrency, seed * 1000, trials, scale)
                    spans += busy_spans(results)
                    steady.append(steady_utilisation(busy_spans(results), concurrency))
                busy = sum(e - b for b, e in spans)  # steady: each experiment's start-up excluded, not its tail
            else:
                _, results, _ = run_tuner(six, "platform", concurrency, seed * 1000, trials, scale, policy=mode)
                spans = busy_spans(results)
                busy = sum(e - b for b, e in spans)
            wall = time.perf_counter() - start
            rows.append(key | {"wall_s": wall, "utilisation": busy / (concurrency * wall),
                               "steady utilisation": steady_utilisation(spans, concurrency)
                               if mode != "separate experiments" else statistics.fmean(steady)})
            log.add(rows[-1])
            print(f"  six studies | {mode:20s} | c={concurrency} seed={seed}: {wall:.1f} s, utilisation "
                  f"{rows[-1]['utilisation']:.2f} (steady {rows[-1]['steady utilisation']:.2f})", flush=True)
    return rows


def earlier_search_top(pool: Surrogate, label: str, concurrency: int, seed: int, trials: int,
                       scale: float) -> list[dict[str, Any]]:
    """The configs `--warm-start SEARCH` takes from an earlier search of the study: its top complete trials
    by final MRR@20."""
    _, results, _ = run_tuner({label: (pool, "")}, "platform", concurrency, seed, trials, scale)
    return sorted(complete_trials(results, pool).values(), key=pool.final, reverse=True)[:TOP_OF_EARLIER_SEARCH]


def warm_start(pools: dict[str, Surrogate], label: str, concurrency: int, seeds: int, trials: int,
               scale: float, log: Log) -> dict[str, list[list[float]]]:
    """Best-so-far true final MRR@20 by trial: cold, warm-started from the published configs, and warm-started
    from an earlier search of half the trials with another seed."""
    _, _, loss = pool_key(label)
    plan = plan_study(loss, "shared", 10, load_space(default_space_file(loss)), {})
    pool = pools[label]
    starts = {"cold": lambda seed: None,
              "warm (published best)": lambda seed: warm_configs(["best"], "", plan),
              "warm (earlier search)": lambda seed: earlier_search_top(pool, label, concurrency, seed * 1000 + 500,
                                                                       trials // 2, scale)}
    curves: dict[str, list[list[float]]] = {kind: [] for kind in starts}
    for seed in range(seeds):
        for kind, warm_for in starts.items():
            key = {"kind": "warm", "pool": label, "start": kind, "seed": seed, "concurrency": concurrency,
                   "trials": trials}
            if (done := log.find(**key)) is not None:
                curves[kind].append(done["line"])
                continue
            warm = warm_for(seed)
            _, results, searchers = run_tuner({label: (pool, "")}, "platform", concurrency, seed * 1000, trials,
                                              scale, warm={label: warm} if warm else None)
            order = measure(results, searchers, {label: pool}, label)[3]
            best, line = 0.0, []
            for value in order:
                best = max(best, value) if value == value else best
                line.append(best)
            curves[kind].append(line)
            log.add(key | {"line": line, "warm finals": [pool.final(c) for c in warm or []]})
            print(f"  warm start | {kind:22s} | seed={seed}: best {best:.4f} of pool {pool.best_final:.4f}",
                  flush=True)
    return curves


def pool_summary(pool: Surrogate) -> dict[str, Any]:
    """What a recorded pool is like: its best final MRR@20 and the runner-up's gap, the configs that blew up,
    and how well the ranking after early epochs predicts the final one (what ASHA's rungs rely on)."""
    import pandas as pd
    final = pool.recorded_finals
    ranked = np.sort(final)[::-1]
    final_rank = pd.Series(final).rank()
    best = int(np.argmax(final))
    return {"configs": len(final), "best final MRR@20": float(ranked[0]),
            "2nd best, % below": 100 * (1 - ranked[1] / ranked[0]), "mean epoch s": pool.mean_epoch_seconds,
            "blew up (final < 0.05)": int((final < 0.05).sum()),
            **{f"rho epoch {k}": float(pd.Series(pool.mrr[:, k - 1]).rank().corr(final_rank))
               for k in (1, 2, 3, 5, pool.epochs - 1)},
            "final top 10 in the epoch-1 top 10": len(set(np.argsort(-final)[:10])
                                                      & set(np.argsort(-pool.mrr[:, 0])[:10])),
            "best config's rank after epoch 1": int((pool.mrr[:, 0] > pool.mrr[best, 0]).sum()) + 1}


def landscape(pool: Surrogate, samples: int = 20_000, seed: int = 0) -> dict[str, float]:
    """How rare near-best configs are in the surrogate: the share of configs drawn uniformly over the space
    whose final MRR@20 is within 1, 2, 3 and 5% of the pool's best, and the regret of the best of them."""
    rng = np.random.default_rng(seed)
    finals = np.array([pool.final(sample_uniform(pool.space, rng)) for _ in range(samples)])
    shares = {f"within {r}%": float(np.mean(finals >= (1 - r / 100) * pool.best_final)) for r in (1, 2, 3, 5)}
    return {"samples": samples, **shares, f"regret of the best of {samples}": 1 - finals.max() / pool.best_final}


def trials_to_reach(line: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(line) if v >= target), None)


def iqm(values: list[float]) -> float:
    """The interquartile mean: the mean of the middle half (robust to a few lucky or unlucky seeds)."""
    ordered = sorted(values)
    cut = len(ordered) // 4
    middle = ordered[cut:len(ordered) - cut]
    return statistics.mean(middle)


def bootstrap_interval(values: list[float], statistic, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of a statistic of the seeds' values."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(values), size=(draws, len(values)))
    found = sorted(statistic([values[i] for i in row]) for row in picks)
    return found[int(0.025 * draws)], found[int(0.975 * draws) - 1]


def summarise(outcomes: list[Outcome], label: str, pool: Surrogate) -> list[dict[str, Any]]:
    rows = []
    for method in METHODS:
        for concurrency in sorted({o.concurrency for o in outcomes}):
            mine = [o for o in outcomes if o.method == method and o.concurrency == concurrency]
            if not mine:
                continue
            budget = mine[0].trials * pool.epochs
            regrets = [100 * o.regret for o in mine]
            low, high = bootstrap_interval(regrets, statistics.median)
            rows.append({"pool": label, "method": method, "concurrency": concurrency, "reps": len(mine),
                         "median regret %": statistics.median(regrets),
                         "median 95% CI": f"{low:.2f}-{high:.2f}",
                         "IQM regret %": iqm(regrets),
                         "worst regret %": 100 * max(o.regret for o in mine),
                         "runs within 1%": sum(o.regret <= 0.01 for o in mine),
                         "epochs % of full budget": 100 * statistics.median(o.epochs for o in mine) / budget,
                         "median wall s": statistics.median(o.wall_s for o in mine),
                         "utilisation": statistics.median(o.utilisation for o in mine),
                         "steady utilisation": statistics.median(o.steady for o in mine),
                         "overhead s / trial": statistics.median(o.overhead_s for o in mine),
                         "decision ms / epoch": statistics.median(o.decision_ms for o in mine)})
    return rows


def paired(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The platform against each other method on the same seeds: seeds where its regret is lower, higher or
    equal, and the mean difference (points); differences between medians hide which seeds they come from."""
    regret = {(o.method, o.concurrency, o.seed): o.regret for o in outcomes}
    rows = []
    for method in METHODS[1:]:
        for concurrency in sorted({o.concurrency for o in outcomes}):
            pairs = [(regret[("platform", c, seed)], value) for (m, c, seed), value in regret.items()
                     if (m, c) == (method, concurrency) and ("platform", c, seed) in regret]
            if pairs:
                rows.append({"platform against": method, "concurrency": concurrency,
                             "seeds": len(pairs), "lower": sum(a < b - 1e-12 for a, b in pairs),
                             "higher": sum(a > b + 1e-12 for a, b in pairs),
                             "mean difference, points": 100 * statistics.mean(a - b for a, b in pairs)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], label: str, curves: dict[str, list[list[float]]] | None, pool: Surrogate,
         path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2 if curves else 1, figsize=(12 if curves else 6, 4.5), squeeze=False)
    ax = axes[0][0]
    budget = outcomes[0].trials * pool.epochs
    markers = dict(zip(METHODS, itertools.cycle("osD^vP*X")))
    for method in METHODS:
        for concurrency in sorted({o.concurrency for o in outcomes}):
            mine = [o for o in outcomes if o.method == method and o.concurrency == concurrency]
            if mine:
                ax.scatter([100 * o.epochs / budget for o in mine], [100 * o.regret for o in mine],
                           marker=markers[method], s=18 + concurrency, alpha=0.6,
                           label=f"{method}, c={concurrency}")
    ax.set(xlabel="epochs used, % of a full-budget search", ylabel="regret, % of the pool's best MRR@20",
           title=f"{label}: regret against cost (marker size: concurrency)")
    ax.legend(fontsize=6, ncol=2)
    if curves:
        ax = axes[0][1]
        for kind, lines in curves.items():
            n = min(len(line) for line in lines)
            median = [statistics.median(line[i] for line in lines) for i in range(n)]
            ax.plot(range(1, n + 1), median, label=kind)
        ax.axhline(0.99 * pool.best_final, color="grey", linestyle=":", label="pool best - 1%")
        ax.set(xlabel="trials asked", ylabel="best final MRR@20 so far (median)", title=f"{label}: warm start")
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def start_ray(slots: int, trials: int) -> None:
    """Start Ray for the experiments that run on Tune (seconds that a virtual sweep alone does not pay)."""
    ray.cloudpickle.register_pickle_by_value(surrogate_module)  # workers need not find bench/ on their path
    if __name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # snapshots as often as the platform takes them for a search of this size
    os.environ.update({**TUNE_ENVIRONMENT, "TUNE_GLOBAL_CHECKPOINT_S": str(snapshot_period(trials))})
    ray.init(num_cpus=slots, include_dashboard=False, log_to_driver=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=CURVES)
    p.add_argument("--pools", default="rsc15 xe",
                   help=f"comma-separated: {', '.join(POOLS)}, or DATASET:STUDY of any pool in --curves")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods of the concurrency "
                   f"sweep (default: all of {', '.join(METHODS)})")
    p.add_argument("--concurrency", default="1,8,32,64")
    p.add_argument("--seeds", type=int, default=10, help="repetitions per setting")
    p.add_argument("--trials", type=int, default=100, help="trials per search")
    p.add_argument("--scale", type=float, default=1 / 300,
                   help="sleep = recorded epoch seconds x scale (the tune engine's; the virtual one does not sleep)")
    p.add_argument("--engine", choices=ENGINES, default="tune",
                   help="what runs the concurrency sweep: Ray Tune with sleeping trials, or the virtual clock "
                        "(bench/virtual.py, no Ray); the studies and warm-start experiments always run on Tune")
    p.add_argument("--experiments", help="comma-separated, of landscape, concurrency, studies, warm (default: all "
                   "four with --engine tune, landscape,concurrency with --engine virtual)")
    p.add_argument("--studies-concurrency", type=int, default=8,
                   help="slots of the six-study experiment (actor start-up on a small machine swamps larger ones)")
    p.add_argument("--studies-scale", type=float, default=1 / 20,
                   help="sleep scale of the six-study experiment: its utilisation is only meaningful when an epoch "
                        "lasts long against the platform's fixed cost per trial (default: 1/20, 0.7 s an epoch)")
    p.add_argument("--log", type=Path, help="the run's JSON-lines log; an existing one is resumed "
                   "(default: a new file in --out)")
    p.add_argument("--out", type=Path, default=HERE, help="folder of results/ and figures/ (default: bench/)")
    p.add_argument("--quick", action="store_true", help="a small end-to-end run: 2 seeds, 12 trials, c = 1, 4")
    if "--quick" in sys.argv:  # smaller defaults; options given on the command line still apply
        p.set_defaults(seeds=2, trials=12, concurrency="1,4", scale=1 / 3000, studies_scale=1 / 1000)
    args = p.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in METHODS]:
        raise SystemExit(f"--methods: unknown {unknown[0]!r} (use {', '.join(METHODS)})")
    pools = surrogates(args.curves, [label.strip() for label in args.pools.split(",") if label.strip()])
    labels = list(pools)
    if not labels:
        raise SystemExit(f"{args.curves}: no pool with 8 or more recorded configs among {args.pools}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    args.experiments = args.experiments or ("landscape,concurrency,studies,warm" if args.engine == "tune"
                                            else "landscape,concurrency")
    experiments = args.experiments.split(",")
    if {"studies", "warm"} & set(experiments) or ("concurrency" in experiments and args.engine == "tune"):
        start_ray(max(concurrencies), args.trials)
    log = Log(args.log or args.out / "results" / f"search-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    print(f"log: {log.path} ({len(log.records)} searches already done)", flush=True)
    figures = args.out / "figures"
    report: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "tables": {}}
    clock = f"slept x {args.scale:g}" if args.engine == "tune" else "on the virtual clock"
    for label in labels:
        pool = pools[label]
        print(f"{label}: {len(pool.configs)} recorded configs, best final MRR@20 {pool.best_final:.4f}, "
              f"mean epoch {pool.mean_epoch_seconds:.1f} s ({clock})", flush=True)
        if "landscape" in experiments:
            report.setdefault("pools", {})[label] = summary = pool_summary(pool)
            print("  pool: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in summary.items()), flush=True)
            report.setdefault("landscape", {})[label] = found = landscape(pool)
            print("  configs drawn uniformly: " + ", ".join(f"{k} {100 * v:.3f}%" if k.startswith("within") else
                                                          f"{k} {100 * v:.2f}%" for k, v in found.items()
                                                          if k != "samples"), flush=True)
        outcomes = concurrency_sweep(pools, label, concurrencies, methods, args.seeds, args.trials,
                                     args.scale, log, args.engine) if "concurrency" in experiments else []
        curves = warm_start(pools, label, concurrencies[min(1, len(concurrencies) - 1)], args.seeds,
                            args.trials, args.scale, log) if "warm" in experiments and label == labels[0] else None
        if outcomes:
            rows = summarise(outcomes, label, pool)
            report["tables"][label] = rows
            report[f"outcomes {label}"] = [o.__dict__ for o in outcomes]
            report.setdefault("paired", {})[label] = against = paired(outcomes)
            print(markdown(rows))
            if against:  # the platform against each other method, when both ran
                print(markdown(against))
            plot(outcomes, label, curves, pool, figures / f"search-{re.sub('[^A-Za-z0-9_.-]', '-', label)}.png")
        if curves:
            target = 0.99 * pool.best_final
            reach = {kind: [trials_to_reach(line, target) for line in lines] for kind, lines in curves.items()}
            report["warm start"] = {"target": target, "trials to reach": reach, "curves": curves}
            print(f"trials to reach {target:.4f} (pool best - 1%): {reach}")
    if "studies" in experiments:
        rows = study_sharing({k: pools[k] for k in labels} if len(labels) > 1 else pools, args.studies_concurrency,
                             max(1, args.seeds // 3), max(8, args.trials // 2), args.studies_scale, log)
        report["studies"] = rows
        print(markdown(rows))
    path = log.path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)  # a landscape-only run logs no search
    path.write_text(json.dumps(report, indent=1, default=float))
    print(f"results written to {path}")
    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    main()
