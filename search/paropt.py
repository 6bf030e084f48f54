"""`gru4rec paropt`: the official paropt.py, as an in-process Optuna TPE search (no subprocess per trial).

It plugs into the `gru4rec` command through the `gru4rec.commands` entry-point group, so the model
library itself never imports Optuna.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from gru4rec import Config, ConfigError, Trainer, TrainingError, evaluate, format_param_file, parse_param_string
from gru4rec.evaluate import EVAL_BATCH
from gru4rec.files import atomic_path
from gru4rec.options import (UsageError, add_data_options, add_training_options, check_cutoffs,
                             check_training_options, check_writable, load_events, report, resolve_device,
                             terminal_progress)

from .spaces import load_space


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution):
    """Ask the trial for a value of `name` from a space distribution."""
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def cmd_paropt(args: argparse.Namespace) -> int:
    check_training_options(args)
    check_cutoffs([args.measure], "-m")
    check_cutoffs(args.final_measure, "-fm")
    if args.ntrials < 1:
        raise UsageError(f"-nt {args.ntrials}: the number of trials must be >= 1")
    device = resolve_device(args.device)
    if args.output:
        check_writable(Path(args.output), "-o")
    fixed = parse_param_string(args.fixed_parameters or "")
    Config.from_dict(fixed)
    space = load_space(args.optuna_parameter_file, study_rules=False)  # like paropt.py: any parameter
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise UsageError(f"{overlap[0]} is both fixed (-fp) and searched (-opf); keep it in one of them")
    print(f"Loading training data from {args.path} and test data from {args.test_path}")
    train = load_events(args, args.path)
    test = load_events(args, args.test_path, train.item_ids)
    test.check_schedule(EVAL_BATCH, "predict")

    def objective(trial: optuna.Trial) -> float:
        params = {**fixed, **{name: suggest(trial, name, dist) for name, dist in space.items()}}
        start = time.perf_counter()
        try:
            config = Config.from_dict(params)
            model = Trainer(config, train, device=device, store_size=args.sample_store_size,
                            threads=args.threads).fit()
        except (ConfigError, TrainingError) as e:
            print(f"Trial {trial.number}: failed ({e}) {params}", flush=True)
            return float("nan")  # recorded as a failed trial; the study goes on
        value = evaluate(model, test, [args.measure], args.eval_type).value(args.primary_metric, args.measure)
        print(f"Trial {trial.number}: {args.primary_metric}@{args.measure} = {value:.6f} "
              f"({time.perf_counter() - start:.1f}s) {_typed(config, params)}", flush=True)
        return value

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(objective, n_trials=args.ntrials)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise UsageError(f"all {len(study.trials)} trials failed; no parameters to report")
    best = {**fixed, **study.best_params}
    config = Config.from_dict(best)
    print(f"Best {args.primary_metric}@{args.measure}: {study.best_value:.6f} (trial {study.best_trial.number}, "
          f"{len(complete)} of {len(study.trials)} trials completed)")
    print(f"Best parameters: {_typed(config, best)}")
    print("Final run with the best parameters")
    model = Trainer(config, train, device=device, store_size=args.sample_store_size, threads=args.threads).fit(
        callback=lambda info: print(info.line(), flush=True), progress=terminal_progress)
    report(evaluate(model, test, args.final_measure, args.eval_type), args.primary_metric, True)
    if args.output:
        with atomic_path(args.output) as tmp:
            tmp.write_text(format_param_file(config))
        print(f"Parameter file written to {args.output}")
    return 0


def _typed(config: Config, params: dict) -> dict:
    """The given parameters with the values the config resolved them to (for printing)."""
    return {name: getattr(config, name) for name in params}


def add_parser(subparsers) -> None:
    """Register `paropt` on the `gru4rec` command."""
    p = subparsers.add_parser(
        "paropt", help="tune hyperparameters with Optuna TPE on a train/test pair (the official paropt.py)",
        description="Search the parameter space of -opf with Optuna's TPE sampler, training on TRAIN and "
                    "measuring on TEST; then train once more with the best parameters and report them.")
    p.add_argument("path", metavar="TRAIN", help="training data: .csv, .parquet, .pickle/.pkl with --allow-pickle, "
                                                 "any other name TAB-separated")
    p.add_argument("test_path", metavar="TEST", help="data the metric is measured on")
    p.add_argument("-opf", "--optuna_parameter_file", metavar="PATH", required=True,
                   help="parameter space: JSON Lines, one {\"name\", \"dtype\": int|float|categorical, "
                        "\"values\", \"step\", \"log\"} object per parameter; any parameter, loss and "
                        "embedding included (see spaces/ for the published ones)")
    p.add_argument("-fp", "--fixed_parameters", metavar="PARAM_STRING",
                   help="parameters kept fixed in every trial, as name=value pairs separated by commas")
    p.add_argument("-m", "--measure", metavar="AT", type=int, default=20,
                   help="cut-off of the optimised metric (default: 20)")
    p.add_argument("-nt", "--ntrials", metavar="N", type=int, default=50, help="number of trials (default: 50)")
    p.add_argument("-fm", "--final_measure", metavar="AT", type=int, nargs="*", default=[20],
                   help="cut-offs reported for the final run with the best parameters (default: 20)")
    p.add_argument("-o", "--output", metavar="PARAM_PATH",
                   help="write the best parameters to this file in the official paramfile format")
    p.add_argument("--seed", type=int, default=None, help="seed of the TPE sampler, for a repeatable search")
    add_training_options(p)
    add_data_options(p)
    p.set_defaults(func=cmd_paropt)
