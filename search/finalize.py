"""Finalize a search: retrain each study's best config on train_full, test it, export paramfiles, tables, plots.

The retrain uses the config read back from the exported paramfile, on the device `gru4rec run` would use,
so `gru4rec run TRAIN_FULL -pf NAME/<study>_best.py -t TEST -m 1 5 10 20 -e standard` reproduces the metrics.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import optuna.visualization.matplotlib as optuna_plots
import pandas as pd
import ray
from optuna.trial import TrialState, create_trial

from gru4rec import Config, SessionData, Trainer, evaluate, format_param_file, read_param_file
from gru4rec.checkpoint import save_model

from .spaces import StudyPlan
from .study import Resources, SearchSettings, Store, read_experiment
from .trainable import METRIC, RECALL, TIE_MODE, device_for_task

CUTOFFS = (1, 5, 10, 20)


@dataclass
class StudyResult:
    """The outcome of one study: its best trial, trial counts and costs, and (after the retrain) test metrics."""

    study: str
    loss: str
    mode: str
    params: dict[str, Any]  # the searched parameters of the best trial
    config: dict[str, Any]  # the full GRU4Rec config, as exported
    trial_id: str
    valid_mrr: float
    valid_recall: float
    trials_run: int
    trials_stopped: int
    trials_failed: int
    trial_hours: float
    gpu_hours: float
    test: dict[str, float] = field(default_factory=dict)  # {"Recall@20": ..., "MRR@20": ...}
    retrain_error: str | None = None

    def row(self) -> dict[str, Any]:
        """One line of the results table."""
        row = {"study": self.study, "config": ",".join(f"{k}={_text(v)}" for k, v in self.params.items()),
               "valid MRR@20": self.valid_mrr, "valid Recall@20": self.valid_recall}
        row.update({f"test {key}": self.test.get(key) for key in _metric_keys()})
        row.update({"trials run": self.trials_run, "stopped early": self.trials_stopped,
                    "failed": self.trials_failed, "trial hours": self.trial_hours, "GPU-hours": self.gpu_hours})
        if self.retrain_error:
            row["retrain error"] = self.retrain_error
        return row


def _metric_keys() -> list[str]:
    """Test metric names in table order: Recall@1, MRR@1, ..., MRR@20."""
    return [f"{m}@{k}" for k in CUTOFFS for m in ("Recall", "MRR")]


def _text(value: Any) -> str:
    """A parameter value as in a parameter string (lists joined with '/')."""
    return "/".join(map(str, value)) if isinstance(value, list) else str(value)


def _tidy(value: Any) -> Any:
    """Round a sampled float (0.15000000000000002 -> 0.15) so paramfiles stay readable."""
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


def collect(settings: SearchSettings, plan: StudyPlan, resources: Resources) -> StudyResult | None:
    """The study's best trial among those that ran every epoch (any trial if none did), with counts and hours."""
    analysis = read_experiment(settings, plan)
    if analysis is None:
        return None
    best, counts, seconds = None, {"run": 0, "stopped": 0, "failed": 0}, 0.0
    for trial in analysis.trials:
        result = trial.last_result or {}
        counts["run"] += 1
        seconds += result.get("time_total_s", 0.0)
        if trial.status == "ERROR":
            counts["failed"] += 1
        elif result.get("epoch", 0) < settings.epochs:
            counts["stopped"] += 1
        if result.get(METRIC) is None or trial.status == "ERROR":
            continue
        key = (result.get("epoch", 0) >= settings.epochs, result[METRIC])
        if best is None or key > best[0]:
            best = (key, trial, result)
    if best is None:
        return None
    _, trial, result = best
    params = {k: _tidy(trial.config[k]) for k in plan.space if k in trial.config}
    _, config = exported_config({**plan.fixed, **params})
    hours = seconds / 3600
    return StudyResult(study=plan.name, loss=plan.loss, mode=plan.mode, params=params, config=config.to_dict(),
                       trial_id=trial.trial_id, valid_mrr=result[METRIC], valid_recall=result[RECALL],
                       trials_run=counts["run"], trials_stopped=counts["stopped"], trials_failed=counts["failed"],
                       trial_hours=hours, gpu_hours=hours * resources.gpus)


@ray.remote
def _retrain(config: Config, train_full: SessionData, test: SessionData) -> tuple[dict[str, float], float, bytes]:
    """Train on train_full for the config's epochs and evaluate on test; returns metrics, seconds, model file."""
    start = time.perf_counter()
    trainer = Trainer(config, train_full, device=device_for_task())
    trainer.fit()
    seconds = time.perf_counter() - start
    result = evaluate(trainer.model, test, cutoffs=CUTOFFS, mode=TIE_MODE)
    metrics = {f"{m}@{k}": float(d[k]) for k in CUTOFFS for m, d in (("Recall", result.recall), ("MRR", result.mrr))}
    with tempfile.TemporaryDirectory(prefix="gru4rec-model-") as directory:
        path = Path(directory) / "model.safetensors"
        save_model(path, trainer.model, train_full.item_ids)
        return metrics, seconds, path.read_bytes()


def retrain(results: list[StudyResult], train_full: SessionData, test: SessionData, resources: Resources,
            store: Store) -> None:
    """Retrain all best configs at once (as Ray tasks with a trial's resources); fills in test metrics."""
    full_ref, test_ref = ray.put(train_full), ray.put(test)
    task = _retrain.options(num_cpus=resources.cpus, num_gpus=resources.gpus)
    futures = {r.study: task.remote(Config.from_dict(r.config), full_ref, test_ref) for r in results}
    for result in results:
        try:
            metrics, seconds, model = ray.get(futures[result.study])
        except ray.exceptions.RayError as e:  # the config diverged on train_full, or the worker died
            result.retrain_error = str(getattr(e, "cause", None) or e).splitlines()[0]
            continue
        result.test = metrics
        result.gpu_hours += seconds / 3600 * resources.gpus
        store.write(f"{result.study}_best.model", model)


def _record_name(study: str) -> str:
    """File of a finalized study's result, which `export` and `resume` reuse."""
    return f"{study}_result.json"


def load_record(store: Store, study: str) -> StudyResult | None:
    """The saved result of a finalized study, or None."""
    text = store.read_text(_record_name(study))
    return None if text is None else StudyResult(**json.loads(text))


def finalize(settings: SearchSettings, store: Store, train_full: SessionData, test: SessionData,
             resources: Resources) -> pd.DataFrame:
    """Retrain what has not been retrained yet (or failed to), save each study's record, then export everything."""
    pending = []
    for plan in settings.plans():
        record = load_record(store, plan.name)
        if record is None or record.retrain_error:
            result = collect(settings, plan, resources)
            if result is not None:
                pending.append(result)
    retrain(pending, train_full, test, resources, store)
    for result in pending:
        store.write(_record_name(result.study), json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return export(settings, store, resources)


def export(settings: SearchSettings, store: Store, resources: Resources) -> pd.DataFrame:
    """Write paramfiles, results.csv, results.md and the plots from records (or live results), no training."""
    rows = []
    for plan in settings.plans():
        result = load_record(store, plan.name) or collect(settings, plan, resources)
        if result is None:
            rows.append({"study": plan.name, "config": "(no trial finished)"})
            continue
        store.write(f"{plan.name}_best.py", paramfile_text(Config.from_dict(result.config)))
        rows.append(result.row())
        write_plots(settings, plan, store)
    table = pd.DataFrame(rows)
    store.write("results.csv", table.to_csv(index=False))
    store.write("results.md", markdown_table(table))
    return table


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


def optuna_study(settings: SearchSettings, plan: StudyPlan) -> optuna.Study | None:
    """The study TPE used: from the Optuna RDB if there is one, else rebuilt from the Tune trials' histories."""
    if settings.optuna_storage:
        return optuna.load_study(study_name=settings.optuna_study_name(plan), storage=settings.optuna_storage)
    analysis = read_experiment(settings, plan)
    if analysis is None:
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line for this rebuilt copy
    study = optuna.create_study(direction="maximize", study_name=plan.name)
    optuna.logging.set_verbosity(verbosity)
    for trial in analysis.trials:
        history = analysis.trial_dataframes.get(trial.trial_id)
        params = {k: trial.config[k] for k in plan.space if k in trial.config}
        if history is None or history.empty or METRIC not in history or len(params) != len(plan.space):
            continue
        last = history.iloc[-1]
        state = (TrialState.FAIL if trial.status == "ERROR" else
                 TrialState.COMPLETE if last["epoch"] >= settings.epochs else TrialState.PRUNED)
        study.add_trial(create_trial(
            state=state, value=None if state == TrialState.FAIL else float(last[METRIC]), params=params,
            distributions=plan.space,
            intermediate_values={int(i): float(v) for i, v in zip(history["training_iteration"], history[METRIC])}))
    return study


def plot_history(study: optuna.Study, title: str) -> plt.Figure:
    """MRR@20 of every trial in order, stopped trials hollow at their last value, and the best complete so far."""
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            axes = optuna_plots.plot_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            return None  # e.g. every complete trial has the same value
    axes.set_title(f"{title}: parameter importance", loc="left")
    return axes.figure


def write_plots(settings: SearchSettings, plan: StudyPlan, store: Store) -> None:
    """PNG plots of the study's optimisation history and parameter importance (when it can be computed)."""
    study = optuna_study(settings, plan)
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
