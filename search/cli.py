"""`gru4rec-search run | resume | status | export`: hyperparameter search for GRU4Rec on Ray Tune + Optuna.

Local by default (an embedded Ray with its dashboard); `--address auto` or `--address ray://head:10001` runs the
same search on a cluster, and so does submitting it as a Ray job, which puts its logs in the dashboard:
    ray job submit --address http://HEAD:8265 --working-dir . -- /abs/path/.venv/bin/gru4rec-search run ...
On several nodes, --storage must be shared (an NFS path or s3://bucket/prefix).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

import ray

from gru4rec import ConfigError, DataError

from .finalize import export, finalize
from .spaces import (SpaceError, canonical_loss, default_space_file, parse_fixed, parse_losses, parse_modes,
                     read_space_text)
from .study import (DEFAULT_STORAGE, SETTINGS_FILE, Resources, SearchData, SearchError, SearchSettings, Store,
                    connect_ray, data_paths_exist, load_settings, new_search_store, optuna_storage, plan_resources,
                    run_study, study_progress)

PROG = "gru4rec-search"
USER_ERRORS = (SearchError, SpaceError, ConfigError, DataError)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad options in one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def space_sources(text: str | None, losses: list[str]) -> dict[str, str]:
    """The space file of each loss: the published one, --space FILE for all, or --space xe=F1,bpr-max=F2."""
    sources = {loss: str(default_space_file(loss)) for loss in losses}
    if not text:
        return sources
    if "=" not in text:
        return {loss: text for loss in losses}
    for part in text.split(","):
        loss, _, path = part.partition("=")
        loss = canonical_loss(loss)
        if loss not in sources:
            raise SpaceError(f"--space {part}: {loss} is not one of the searched losses (--losses)")
        sources[loss] = path.strip()
    return sources


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    """Build and check the settings of a new search from the command line (no data, storage or Ray yet)."""
    losses, modes = parse_losses(args.losses), parse_modes(args.modes)
    spaces = {loss: {"source": path, "text": read_space_text(path)}
              for loss, path in space_sources(args.space, losses).items()}
    settings = SearchSettings(
        name=args.name, train=args.train, valid=args.valid, train_full=args.train_full, test=args.test,
        losses=losses, modes=modes, spaces=spaces, fixed=parse_fixed(args.fixed or ""), trials=args.trials,
        epochs=args.epochs, storage=args.storage, seed=args.seed, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, max_failures=args.max_failures, optuna_storage=args.optuna_storage,
        optuna_study=args.optuna_study)
    settings.validate()
    return settings


def prepare(settings: SearchSettings) -> SearchData:
    """Every check that can fail on user input, before Ray starts: data files, their contents, Optuna storage."""
    data_paths_exist(settings)
    data = SearchData.load(settings)
    optuna_storage(settings.optuna_storage)
    return data


def cmd_run(args: argparse.Namespace) -> int:
    """Start a new search: check everything, then run its studies and finalize."""
    settings = settings_from_args(args)
    data = prepare(settings)
    store = new_search_store(settings)
    return execute(settings, store, data, args, new=True)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a search from its saved settings and Tune experiments."""
    settings, store = load_settings(args.name, args.storage)
    settings.validate()
    data = prepare(settings)
    return execute(settings, store, data, args)


def execute(settings: SearchSettings, store: Store, data: SearchData, args: argparse.Namespace,
            new: bool = False) -> int:
    """Run every unfinished study, then finalize; Ray is shut down however this ends.

    A new search's settings are saved once Ray is up and the resources fit, just before the first trial.
    """
    remote = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if remote and "://" not in settings.storage:
        print(f"note: on several nodes --storage must be shared (NFS or s3://...); it is {settings.storage}")
    dashboard = connect_ray(args.address, args.local_cpus, not args.no_dashboard, args.quiet)
    try:
        resources = plan_resources(settings, ray.cluster_resources(), remote)
        if new:
            store.write(SETTINGS_FILE, settings.to_json())
        print(f"search {settings.name}: {len(settings.plans())} studies x {settings.trials} trials x "
              f"{settings.epochs} epochs, {resources.max_concurrent} trials at once, "
              f"{resources.cpus:g} CPU / {resources.gpus:g} GPU each")
        print(f"results: {settings.search_uri}   TensorBoard: tensorboard --logdir {settings.search_uri}")
        if dashboard:
            print(f"Ray dashboard: {dashboard}")
        for index, plan in enumerate(settings.plans()):
            if study_progress(settings, plan).finished(settings.trials):
                print(f"study {plan.name}: already finished")
                continue
            print(f"study {plan.name}: searching {', '.join(plan.space)}")
            run_study(settings, plan, index, data, resources, verbose=0 if args.quiet else 1)
        print("retraining the best config of each study on train_full and testing it")
        finalize(settings, store, data.train_full, data.test, resources)
    finally:
        ray.shutdown()
    print_outputs(settings, store)
    return 0


def print_outputs(settings: SearchSettings, store: Store) -> None:
    """The results table and where the exported files are."""
    print()
    print(store.read_text("results.md"), end="")
    print(f"\nfiles in {settings.search_uri}/:")
    print("  <study>_best.py         best config per study (official paramfile: gru4rec run TRAIN -pf FILE)")
    print("  <study>_best.model      that config retrained on train_full")
    print("  results.csv, results.md the table above")
    print("  <study>_history.png, <study>_importance.png   optimisation history and parameter importance")
    print("  <study>/                Tune experiment: trials, checkpoints, TensorBoard logs")


def cmd_status(args: argparse.Namespace) -> int:
    """Print each study's progress and best config so far (reads the saved state only)."""
    settings, store = load_settings(args.name, args.storage)
    print(f"search {settings.name} in {settings.search_uri}: {settings.trials} trials x {settings.epochs} epochs "
          "per study")
    header = f"{'study':<16} {'trials':>9} {'running':>8} {'stopped':>8} {'failed':>7} {'best MRR@20':>12}  best config"
    print(header)
    for plan in settings.plans():
        p = study_progress(settings, plan)
        if not p.started:
            print(f"{plan.name:<16} {'not started':>9}")
            continue
        done = "finalized" if store.exists(f"{plan.name}_result.json") else ""
        best = f"{p.best_mrr:.4f}" if p.best_mrr is not None else "-"
        config = ",".join(f"{k}={v}" for k, v in p.best_params.items())
        print(f"{plan.name:<16} {f'{p.trials - p.unfinished}/{settings.trials}':>9} {p.unfinished:>8} "
              f"{p.stopped_early:>8} {p.failed:>7} {best:>12}  {config} {done}".rstrip())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Rewrite paramfiles, tables and plots from the saved results, without Ray or training."""
    settings, store = load_settings(args.name, args.storage)
    export(settings, store, Resources(cpus=settings.cpus_per_trial, gpus=settings.gpus_per_trial or 0.0,
                                      max_concurrent=1))
    print_outputs(settings, store)
    return 0


def _ray_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that start or join Ray."""
    parser.add_argument("--address", help="Ray cluster to join: auto, ray://HEAD:10001 (default: a local Ray)")
    parser.add_argument("--local-cpus", type=int, help="CPUs of the local Ray (default: all of this machine)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no Tune progress tables or worker logs here")


def build_parser() -> argparse.ArgumentParser:
    """The gru4rec-search command line: run, resume, status, export."""
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser("run", help="start a search: one study per loss x embedding mode")
    for option in ("--train", "--valid", "--train-full", "--test"):
        run.add_argument(option, required=True, help=f"the {option[2:]} split (TSV, CSV, Parquet or pickle)")
    run.add_argument("--name", required=True, help="name of the search (a folder under --storage)")
    run.add_argument("--losses", default="xe,bpr-max", help="comma-separated: xe, bpr-max (default: both)")
    run.add_argument("--modes", default="none,separate,shared", help="embedding modes (default: all three)")
    run.add_argument("--trials", type=int, default=200, help="trials per study (default: 200)")
    run.add_argument("--epochs", type=int, default=10, help="epochs of a full trial and of the retrain (default: 10)")
    run.add_argument("--space", help="space file for all losses, or xe=FILE,bpr-max=FILE (default: spaces/)")
    run.add_argument("--fixed", help="fixed parameters k=v,... (take them out of the space)")
    run.add_argument("--gpus-per-trial", type=float, help="GPU share per trial (default: 0.25 with GPUs, else 0)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    run.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    run.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    run.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep 1/r at each rung (default 3)")
    run.add_argument("--max-failures", type=int, default=2, help="retries of a trial whose worker dies")
    run.add_argument("--storage", default=DEFAULT_STORAGE,
                     help=f"results root: path or URI (default: {DEFAULT_STORAGE})")
    run.add_argument("--optuna-storage", help="Optuna RDB for the studies, e.g. sqlite:///studies.db")
    run.add_argument("--optuna-study", help="prefix of the Optuna study names (default: --name); reuse one to extend")
    run.add_argument("--seed", type=int, default=0, help="seed of the TPE samplers (default: 0)")
    _ray_options(run)
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue a search after a crash; no finished trial is rerun")
    resume.add_argument("name")
    resume.add_argument("--storage", default=DEFAULT_STORAGE)
    _ray_options(resume)
    resume.set_defaults(func=cmd_resume)

    for command, func, text in (("status", cmd_status, "progress of every study and the best config so far"),
                                ("export", cmd_export, "re-export paramfiles, tables and plots (no retraining)")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name")
        sub.add_argument("--storage", default=DEFAULT_STORAGE)
        sub.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; user errors are one line on stderr with exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        message = " ".join(str(e).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
