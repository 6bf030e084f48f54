"""Finalize a search: pick each study's config robustly, retrain it on train_full, test it, export everything.

Selection: the top-k configs of a study's ledger (by final validation MRR@20 of trials that ran every
epoch) are each trained again on train_tr with several seeds and evaluated on train_valid; the best
mean wins (one run is too noisy to choose between close configs). The winner is then trained on
train_full with the same seeds and tested: the table gives test Recall/MRR as mean +- sd over seeds,
the margin over the runner-up, and the popularity and first-order Markov baselines on the same split.

Every retrain is one Ray task with a trial's resources; its result is written as soon as it finishes,
so a kill during finalize redoes only the retrains that had not finished. The winner's retrain with
the paramfile's seed is saved as `<study>_best.model`, and
`gru4rec run TRAIN_FULL -pf NAME/<study>_best.py -t TEST -m 1 5 10 20 -e standard` reproduces it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
import ray
from optuna.trial import TrialState

from gru4rec import Config, SessionData, Trainer, evaluate, format_param_file, read_param_file
from gru4rec.checkpoint import save_model

from .baselines import evaluate_baselines
from .cluster import Resources
from .ledger import Outcome, TrialRecord, counts, rung_correlations
from .settings import SearchSettings, Store
from .spaces import StudyPlan
from .progress import correlation_notes, read_ledgers
from .study import optuna_storage
from .trainable import TIE_MODE, device_for_task, graphs_option

if TYPE_CHECKING:  # matplotlib is imported where it plots: it costs `status` 0.6 s otherwise
    import matplotlib.pyplot as plt

CUTOFFS = (1, 5, 10, 20)
BASELINES_FILE = "baselines.json"


@dataclass(frozen=True)
class Retrain:
    """One retrain job: a candidate config of a study with one seed, for selection or for the final test."""

    study: str
    phase: str  # "select": train_tr -> train_valid; "final": train_full -> test
    rank: int  # the candidate's place in the study's ledger (0 = best trial)
    seed: int
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"retrain/{self.study}/{self.phase}-{self.rank}-seed{self.seed}.json"


@dataclass
class StudyResult:
    """The outcome of one study: the winning config, its test metrics over seeds, trial counts and costs."""

    study: str
    loss: str
    mode: str
    params: dict[str, Any]  # the searched parameters of the winner
    config: dict[str, Any]  # the full GRU4Rec config, as exported
    trial_id: str
    valid_mrr: float  # of the winner's search trial
    valid_mrr_seeds: float  # mean over seeds of the selection retrains
    runner_up_margin: float | None  # valid_mrr_seeds minus the runner-up's mean (None with one candidate)
    trials: dict[str, int]  # per outcome
    trial_hours: float
    gpu_hours: float
    seeds: list[int] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)  # mean over seeds
    test_sd: dict[str, float] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # rank, params, per-seed valid MRR
    rung_correlation: dict[str, float | None] = field(default_factory=dict)  # epoch -> Spearman rho
    retrain_error: str | None = None

    def row(self) -> dict[str, Any]:
        """One line of the results table."""
        row = {"study": self.study, "config": config_text(self.params), "valid MRR@20 (trial)": self.valid_mrr,
               f"valid MRR@20 (mean of {len(self.seeds)} seeds)": self.valid_mrr_seeds,
               "margin over runner-up": self.runner_up_margin}
        for key in metric_keys():
            row[f"test {key}"] = self.test.get(key)
            row[f"test {key} sd"] = self.test_sd.get(key)
        row.update({f"trials {outcome}": n for outcome, n in self.trials.items() if outcome != Outcome.RUNNING.value})
        row.update({"trial hours": self.trial_hours, "GPU-hours": self.gpu_hours})
        if self.retrain_error:
            row["retrain error"] = self.retrain_error
        return row


def metric_keys() -> list[str]:
    """Test metric names in table order: Recall@1, MRR@1, ..., MRR@20."""
    return [f"{m}@{k}" for k in CUTOFFS for m in ("Recall", "MRR")]


def config_text(params: dict[str, Any]) -> str:
    """Parameters as in a parameter string (lists joined with '/')."""
    return ",".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items())


def tidy(value: Any) -> Any:
    """Round a sampled float (0.15000000000000002 -> 0.15) so paramfiles and tables stay readable."""
    return round(value, 10) if isinstance(value, float) else value


def paramfile_text(config: Config) -> str:
    """The official paramfile; the seed is added only when it differs from the default (run.py has none)."""
    text = format_param_file(config)
    if config.seed != Config().seed:
        text = text.replace("\n])\n", f"\n    ('seed', {config.seed}),\n])\n")
    return text


def exported_config(params: dict[str, Any]) -> tuple[str, Config]:
    """The paramfile text of a config and the config read back from it, exactly as `gru4rec run -pf` reads it."""
    text = paramfile_text(Config.from_dict(params))
    with tempfile.TemporaryDirectory(prefix="gru4rec-paramfile-") as directory:
        path = Path(directory) / "best.py"
        path.write_text(text)
        return text, Config.from_dict(read_param_file(path))


def candidates(records: list[TrialRecord], k: int) -> list[TrialRecord]:
    """The k best distinct configs of a ledger: complete trials by final MRR@20 (others only if none completed)."""
    complete = [r for r in records if r.outcome == Outcome.COMPLETE and r.final_mrr is not None]
    pool = complete or [r for r in records if r.outcome in (Outcome.STOPPED, Outcome.DIVERGED) and r.mrr]
    chosen, seen = [], set()
    for r in sorted(pool, key=lambda r: r.final_mrr, reverse=True):
        key = json.dumps({n: tidy(v) for n, v in r.params.items()}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            chosen.append(r)
        if len(chosen) == k:
            break
    return chosen


def retrain_seeds(base: int, n: int) -> list[int]:
    """The config's own seed first (the exported paramfile reproduces that run), then base + 1, ..."""
    return [base + i for i in range(n)]


@ray.remote
def _retrain(config: dict[str, Any], train: SessionData, evaluation: SessionData, with_model: bool,
             cuda_graphs: bool) -> tuple[dict[str, float], float, bytes | None]:
    """Train for the config's epochs and evaluate; returns metrics, seconds and (if asked) the model file."""
    start = time.perf_counter()
    trainer = Trainer(Config.from_dict(config), train, device=device_for_task(),
                      cuda_graphs=graphs_option(cuda_graphs))
    trainer.fit()
    seconds = time.perf_counter() - start
    result = evaluate(trainer.model, evaluation, cutoffs=CUTOFFS, mode=TIE_MODE)
    metrics = {f"{m}@{k}": float(d[k]) for k in CUTOFFS for m, d in (("Recall", result.recall), ("MRR", result.mrr))}
    if not with_model:
        return metrics, seconds, None
    with tempfile.TemporaryDirectory(prefix="gru4rec-model-") as directory:
        path = Path(directory) / "model.safetensors"
        save_model(path, trainer.model, train.item_ids)
        return metrics, seconds, path.read_bytes()


def run_retrains(jobs: list[Retrain], data: dict[str, ray.ObjectRef], resources: Resources, store: Store,
                 cuda_graphs: bool) -> None:
    """Run the jobs whose result is not in the store yet, writing each result (or its error) as it finishes."""
    pending = [job for job in jobs if not store.exists(job.name)]
    task = _retrain.options(num_cpus=resources.cpus, num_gpus=resources.gpus)
    futures = {}
    for job in pending:
        train, evaluation = ("train", "valid") if job.phase == "select" else ("train_full", "test")
        with_model = job.phase == "final" and job.seed == job.config["seed"]
        futures[task.remote(job.config, data[train], data[evaluation], with_model, cuda_graphs)] = job
    while futures:
        done, _ = ray.wait(list(futures), num_returns=1)
        job = futures.pop(done[0])
        try:
            metrics, seconds, model = ray.get(done[0])
        except ray.exceptions.RayError as e:  # the config diverged on this data, or the worker died
            store.write(job.name, json.dumps({"error": str(getattr(e, "cause", None) or e).splitlines()[0]}))
            continue
        if model is not None:
            store.write(f"{job.study}_best.model", model)
        store.write(job.name, json.dumps({"metrics": metrics, "seconds": seconds}))


def load_run(store: Store, job: Retrain) -> dict[str, Any] | None:
    text = store.read_text(job.name)
    return None if text is None else json.loads(text)


def finalize(settings: SearchSettings, store: Store, data: dict[str, ray.ObjectRef],
             resources: Resources) -> pd.DataFrame:
    """Select, retrain and test each study's best config (what is already done is kept), then export."""
    top_k, n_seeds = settings.top_k, settings.seeds
    plans = settings.plans()
    ledgers = {name: records or [] for name, records in read_ledgers(settings, plans).items()}
    todo = [plan for plan in plans if load_record(store, plan.name) is None and ledgers[plan.name]]
    picks = {plan.name: candidates(ledgers[plan.name], top_k) for plan in todo}
    configs = {plan.name: [exported_config({**plan.fixed, **{k: tidy(v) for k, v in r.params.items()}})[1].to_dict()
                           for r in picks[plan.name]] for plan in todo}
    selection = [Retrain(name, "select", rank, seed, {**config, "seed": seed})
                 for name, configs_ in configs.items() for rank, config in enumerate(configs_)
                 for seed in retrain_seeds(config["seed"], n_seeds)]
    run_retrains(selection, data, resources, store, settings.cuda_graphs)
    finals = []
    for plan in todo:
        winner = _winner(plan.name, configs[plan.name], selection, store)
        if winner is not None:
            config = configs[plan.name][winner]
            finals += [Retrain(plan.name, "final", winner, seed, {**config, "seed": seed})
                       for seed in retrain_seeds(config["seed"], n_seeds)]
    run_retrains(finals, data, resources, store, settings.cuda_graphs)
    for plan in todo:
        result = study_result(settings, plan, ledgers[plan.name], picks[plan.name], configs[plan.name],
                              selection, finals, store, resources)
        if result is not None:
            store.write(record_name(plan.name), json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return export(settings, store, resources, data)


def _winner(study: str, configs: list[dict], jobs: list[Retrain], store: Store) -> int | None:
    """The rank of the candidate with the best mean validation MRR@20 over its seeds."""
    means = {}
    for rank in range(len(configs)):
        runs = [load_run(store, j) for j in jobs if j.study == study and j.rank == rank]
        values = [r["metrics"]["MRR@20"] for r in runs if r and "metrics" in r]
        if values:
            means[rank] = statistics.fmean(values)
    return max(means, key=means.get) if means else None


def study_result(settings: SearchSettings, plan: StudyPlan, records: list[TrialRecord], picks: list[TrialRecord],
                 configs: list[dict], selection: list[Retrain], finals: list[Retrain], store: Store,
                 resources: Resources) -> StudyResult | None:
    """The study's record from its ledger and the stored retrain results."""
    if not picks:
        return None
    rows = []
    for rank, pick in enumerate(picks):
        runs = [load_run(store, j) for j in selection if j.study == plan.name and j.rank == rank]
        values = [r["metrics"]["MRR@20"] for r in runs if r and "metrics" in r]
        rows.append({"rank": rank, "trial_id": pick.trial_id, "params": {k: tidy(v) for k, v in pick.params.items()},
                     "trial valid MRR@20": pick.final_mrr, "valid MRR@20 per seed": values,
                     "mean": statistics.fmean(values) if values else None})
    scored = sorted((r for r in rows if r["mean"] is not None), key=lambda r: r["mean"], reverse=True)
    hours = sum(r.seconds for r in records) / 3600
    tally = {outcome.value: n for outcome, n in counts(records).items()}
    result = StudyResult(study=plan.name, loss=plan.loss, mode=plan.mode, params={}, config={}, trial_id="",
                         valid_mrr=0.0, valid_mrr_seeds=0.0, runner_up_margin=None, trials=tally,
                         trial_hours=hours, gpu_hours=hours * resources.gpus, candidates=rows,
                         rung_correlation=rung_correlations(records, settings.epochs, settings.grace_period,
                                                            settings.reduction_factor))
    if not scored:
        result.retrain_error = "every selection retrain failed"
        return result
    win = scored[0]
    result.params, result.trial_id = win["params"], win["trial_id"]
    result.config = configs[win["rank"]]
    result.valid_mrr, result.valid_mrr_seeds = win["trial valid MRR@20"], win["mean"]
    result.runner_up_margin = win["mean"] - scored[1]["mean"] if len(scored) > 1 else None
    final_runs = [(j, load_run(store, j)) for j in finals if j.study == plan.name]
    ok = [(j, r) for j, r in final_runs if r and "metrics" in r]
    errors = [r["error"] for _, r in final_runs if r and "error" in r]
    result.seeds = [j.seed for j, _ in ok]
    for key in metric_keys():
        values = [r["metrics"][key] for _, r in ok if key in r["metrics"]]
        if values:
            result.test[key] = statistics.fmean(values)
            result.test_sd[key] = statistics.stdev(values) if len(values) > 1 else 0.0
    result.gpu_hours += sum(r["seconds"] for _, r in ok) / 3600 * resources.gpus
    if errors and not ok:
        result.retrain_error = errors[0]
    return result


def record_name(study: str) -> str:
    """File of a finalized study's result, which `export` and `resume` reuse."""
    return f"{study}_result.json"


def load_record(store: Store, study: str) -> StudyResult | None:
    """The saved result of a finalized study, or None."""
    text = store.read_text(record_name(study))
    return None if text is None else StudyResult(**json.loads(text))


def baselines(store: Store, data: dict[str, ray.ObjectRef] | None) -> dict[str, dict[str, float]] | None:
    """Popularity and Markov on train_full -> test, computed once and kept in the search folder."""
    text = store.read_text(BASELINES_FILE)
    if text is not None:
        return json.loads(text)
    if data is None:
        return None
    found = evaluate_baselines(ray.get(data["train_full"]), ray.get(data["test"]), CUTOFFS, TIE_MODE)
    store.write(BASELINES_FILE, json.dumps(found, indent=2) + "\n")
    return found


def export(settings: SearchSettings, store: Store, resources: Resources,
           data: dict[str, ray.ObjectRef] | None = None) -> pd.DataFrame:
    """Write paramfiles, results.csv, results.md and the plots from the records, without training."""
    rows, notes = [], []
    for plan in settings.plans():
        result = load_record(store, plan.name)
        if result is None:
            rows.append({"study": plan.name, "config": "(not finalized)"})
            continue
        if result.config:
            store.write(f"{plan.name}_best.py", paramfile_text(Config.from_dict(result.config)))
        rows.append(result.row())
        notes += correlation_notes(plan.name, result.rung_correlation)
        write_plots(settings, plan, store)
    for name, metrics in (baselines(store, data) or {}).items():
        rows.append({"study": f"baseline: {name}", "config": "-",
                     **{f"test {key}": metrics.get(key) for key in metric_keys()}})
    table = pd.DataFrame(rows)
    store.write("results.csv", table.to_csv(index=False))
    store.write("results.md", markdown_table(summary(table)) + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    return table


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of the Markdown table: metrics at 20 as mean +- sd over seeds, trial counts, hours."""
    def mean_sd(row: pd.Series, key: str) -> str:
        mean, sd = row.get(f"test {key}"), row.get(f"test {key} sd")
        if mean is None or pd.isna(mean):
            return ""
        return f"{mean:.4f}" if sd is None or pd.isna(sd) else f"{mean:.4f} ± {sd:.4f}"

    out = pd.DataFrame({"study": table["study"], "config": table["config"]})
    for column in table.columns:
        if column.startswith("valid") or column == "margin over runner-up":
            out[column] = table[column]
    out["test Recall@20"] = [mean_sd(row, "Recall@20") for _, row in table.iterrows()]
    out["test MRR@20"] = [mean_sd(row, "MRR@20") for _, row in table.iterrows()]
    trials = [c for c in table.columns if c.startswith("trials ")]
    if trials:
        out["trials (complete/stopped/diverged/failed)"] = [
            "" if pd.isna(row[trials[0]]) else "/".join(str(int(row[c])) for c in trials)
            for _, row in table.iterrows()]
    for column in ("trial hours", "GPU-hours", "retrain error"):
        if column in table:
            out[column] = table[column]
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (numbers with 4 decimals, hours with 3)."""
    def cell(column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.3f}" if "hours" in column else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def optuna_study(settings: SearchSettings, store: Store, plan: StudyPlan) -> optuna.Study | None:
    """The study TPE used, from the search's Optuna storage."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=settings.optuna_study_name(plan), storage=optuna_storage(settings, store))
    except KeyError:
        return None
    finally:
        optuna.logging.set_verbosity(verbosity)


def plot_history(study: optuna.Study, title: str) -> plt.Figure:
    """MRR@20 of every trial in order, stopped trials hollow at their last value, and the best complete so far."""
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4))
    best, best_line = None, []
    for state, style in ((TrialState.COMPLETE, {"color": "tab:blue"}),
                         (TrialState.PRUNED, {"facecolors": "none", "edgecolors": "tab:orange"})):
        trials = [t for t in study.trials if t.state == state and t.value is not None]
        label = "all epochs" if state == TrialState.COMPLETE else "stopped early (last value)"
        axes.scatter([t.number for t in trials], [t.value for t in trials], label=label, **style)
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            best = trial.value if best is None else max(best, trial.value)
        best_line.append(best)
    axes.step(range(len(best_line)), [float("nan") if b is None else b for b in best_line], where="post",
              color="tab:red", label="best complete so far")
    axes.set(xlabel="trial", ylabel="validation MRR@20", title=f"{title}: optimisation history")
    axes.legend(loc="best")
    return figure


def plot_importance(study: optuna.Study, title: str) -> plt.Figure | None:
    """Optuna's parameter importance (fANOVA over complete trials), or None when it cannot be computed."""
    if sum(t.state == TrialState.COMPLETE for t in study.trials) < 2:
        return None
    import optuna.visualization.matplotlib as optuna_plots
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API; equal importances when few trials differ
        try:
            axes = optuna_plots.plot_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None  # e.g. every complete trial has the same value
    axes.set_title(f"{title}: parameter importance", loc="left")
    return axes.figure


def write_plots(settings: SearchSettings, plan: StudyPlan, store: Store) -> None:
    """PNG plots of the study's optimisation history and parameter importance (when it can be computed)."""
    import matplotlib.pyplot as plt
    study = optuna_study(settings, store, plan)
    if study is None:
        return
    title = f"{settings.name} / {plan.name}"
    for kind, figure in (("history", plot_history(study, title)), ("importance", plot_importance(study, title))):
        if figure is None:
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        store.write(f"{plan.name}_{kind}.png", buffer.getvalue())
