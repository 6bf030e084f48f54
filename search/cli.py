"""`gru4rec-search run | resume | status | export | dashboard`: hyperparameter search for GRU4Rec (Ray Tune + Optuna).

Local by default (an embedded Ray with its dashboard); `--address auto` or `--address ray://head:10001` runs the
same search on a cluster, and so does submitting it as a Ray job, which puts its logs in the dashboard:
    ray job submit --address http://HEAD:8265 --working-dir . -- /abs/path/.venv/bin/gru4rec-search run ...
On several nodes, --storage must be shared (an NFS path or s3://bucket/prefix).

The commands that run the search (run, resume, export, dashboard) import Ray, torch and the trainer when they run;
`status` reads the search folder without them, and answers in a second or two.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from gru4rec import ConfigError, DataError

from .calibration import RUNG_RULES, describe, from_histories
from .ledger import Outcome, best, rung_correlations, rung_epochs
from .lease import DriverLock, driver_line
from .progress import correlation_notes, study_progress
from .settings import (CHECKPOINT_EVERY, DEFAULT_STORAGE, EARLY_STOPPING, EXPERIMENT, MAX_TRIALS_PER_GPU,
                       NAME_PATTERN, POLICIES, SETTINGS_FILE, SearchError, SearchSettings, Store, is_uri,
                       resolve_storage)
from .spaces import (SpaceError, canonical_loss, default_space_file, parse_fixed, parse_losses, parse_modes,
                     read_space_text)

if TYPE_CHECKING:
    from .cluster import Resources
    from .study import SearchData

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
        reduction_factor=args.reduction_factor, early_stopping=args.early_stopping,
        checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
        optuna_storage=args.optuna_storage, optuna_study=args.optuna_study or args.name,
        allow_pickle=args.allow_pickle, top_k=args.top_k, seeds=args.seeds, policy=args.studies,
        gpu_memory=args.gpu_memory, cuda_graphs=args.cuda_graphs,
        warm_start=[p.strip() for p in (args.warm_start or "").split(",") if p.strip()])
    settings.validate()
    settings.make_paths_absolute()
    if not is_uri(settings.storage):
        settings.storage = resolve_storage(settings.storage)
    return settings


def gpu_share(text: str) -> float | None:
    """--gpus-per-trial: a number, or auto (None: sized per study at `run`)."""
    return None if text == "auto" else float(text)


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise SearchError(f"search name {name!r}: use letters, digits, '_', '.' and '-' only")


def load_settings(name: str, storage: str) -> tuple[SearchSettings, Store]:
    """The settings of an existing search, with a one-line error if there is none.

    The folder is the search: its name and storage root are where it is now, whatever search.json says
    (a copied or renamed folder is read and written where it is).
    """
    check_name(name)
    store = Store(f"{resolve_storage(storage)}/{name}")
    text = store.read_text(SETTINGS_FILE)
    if text is None:
        raise SearchError(f"no search {name!r} in {resolve_storage(storage)} (no {SETTINGS_FILE}); "
                          "pass the --storage it was started with")
    settings = SearchSettings.from_json(text, store.path(SETTINGS_FILE))
    settings.name = name
    settings.storage = storage if is_uri(storage) else resolve_storage(storage)
    return settings, store


def new_search_store(settings: SearchSettings) -> Store:
    """The store of a new search: refuses an existing search of that name and checks the storage is writable."""
    store = Store(settings.search_uri)
    if store.exists(SETTINGS_FILE):
        raise SearchError(f"search {settings.name!r} already exists in {resolve_storage(settings.storage)}; "
                          f"continue it with: gru4rec-search resume {settings.name}, or choose another --name")
    store.check_writable()
    return store


def prepare(settings: SearchSettings) -> SearchData:
    """Every check that can fail on user input, before Ray starts: data files, their contents, Optuna storage."""
    from .study import SearchData
    settings.check_data()
    return SearchData.load(settings)


def cmd_run(args: argparse.Namespace) -> int:
    """Start a new search: check everything, write search.json, then run its studies and finalize."""
    settings = settings_from_args(args)
    data = prepare(settings)
    store = new_search_store(settings)
    settings.take_fingerprints()
    lock = DriverLock(store)
    lock.acquire()
    try:
        store.write(SETTINGS_FILE, settings.to_json())
        return execute(settings, store, data, args, new=True)
    finally:
        lock.release()


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a search from its saved settings, Tune experiment and Optuna studies (or extend it)."""
    settings, store = load_settings(args.name, args.storage)
    lock = DriverLock(store)
    lock.acquire()
    try:
        data = prepare(settings)
        if args.trials is not None:
            extend(settings, store, args.trials)
        return execute(settings, store, data, args)
    finally:
        lock.release()


def extend(settings: SearchSettings, store: Store, trials: int) -> None:
    """Raise the number of trials per study; studies finalized with fewer are finalized again afterwards."""
    if trials < settings.trials:
        raise SearchError(f"--trials {trials}: the search already has {settings.trials} trials per study")
    if trials == settings.trials:
        return
    print(f"search {settings.name}: {settings.trials} -> {trials} trials per study")
    settings.trials = trials
    store.write(SETTINGS_FILE, settings.to_json())
    for plan in settings.plans():
        store.delete(f"{plan.name}_result.json")
        for name in store.list(f"retrain/{plan.name}"):
            store.delete(f"retrain/{plan.name}/{name}")


def execute(settings: SearchSettings, store: Store, data: SearchData, args: argparse.Namespace,
            new: bool = False) -> int:
    """Run every unfinished study, then finalize; Ray is shut down however this ends.

    A new search's trial resources are resolved once Ray is up and saved, so a resume reuses them.
    """
    import ray

    from .cluster import connect_ray, plan_resources
    from .finalize import finalize
    from .study import checkpoint_bound, largest_config, optuna_storage, run_search
    from .warmstart import warm_configs
    remote = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if remote and not is_uri(settings.storage):
        print(f"note: on several nodes --storage must be shared (NFS or s3://...); it is {settings.storage}")
    optuna_storage(settings, store)  # a bad --optuna-storage fails here, before Ray starts
    dashboard = connect_ray(args.address, args.local_cpus, not args.no_dashboard, args.quiet)
    try:
        plans = settings.plans()
        try:
            resources = plan_resources(settings, ray.cluster_resources(), remote,
                                       {plan.name: largest_config(plan) for plan in plans}, data.train)
        except SearchError:
            if new:  # nothing has run: the search was never started
                store.delete(SETTINGS_FILE)
            raise
        if new:
            settings.gpus_per_trial, settings.max_concurrent = resources.gpus, resources.max_concurrent
            settings.study_gpus = resources.study_gpus
            settings.disk_bound = max(checkpoint_bound(settings, plan, data.train.n_items, resources) for plan in plans)
            store.write(SETTINGS_FILE, settings.to_json())
        print(f"search {settings.name}: {len(plans)} studies x {settings.trials} trials x "
              f"{settings.epochs} epochs, {resources.max_concurrent} trials at once, "
              f"{resources.describe()}")
        for line in resources.share_lines():
            print(line)
        print(f"results: {settings.search_uri}   TensorBoard: tensorboard --logdir {settings.search_uri}")
        print(f"disk: checkpoints stay below {settings.disk_bound / 2**20:,.1f} MB "
              f"(2 per running trial + 1; an ended trial keeps its metrics only); a trial saves its training "
              f"state after epochs {', '.join(map(str, settings.saved_epochs()))}")
        if dashboard:
            print(f"Ray dashboard: {dashboard}")
        print(f"Optuna dashboard: gru4rec-search dashboard {settings.name} --storage {settings.storage}")
        refs = data.put()
        progress = study_progress(settings, plans)
        todo = [plan for plan in plans if not progress[plan.name].finished(settings.trials)]
        for plan in plans:
            if plan not in todo:
                print(f"study {plan.name}: already finished")
        if todo:
            warm = {plan.name: warm_configs(settings.warm_start, settings.storage, plan) for plan in plans} \
                if new and settings.warm_start else None
            print(f"studies {', '.join(p.name for p in plans)}: trial slots {settings.policy}; searching "
                  f"{', '.join(plans[0].space)}")
            run_search(settings, store, plans, refs, resources, verbose=0 if args.quiet else 1,
                       retry_failed=getattr(args, "retry_failed", False), warm=warm)
        print("selecting and retraining the best configs of each study, then testing them")
        finalize(settings, store, refs, resources)
        del refs
    finally:
        ray.shutdown()
    print_outputs(settings, store)
    return 0


def print_outputs(settings: SearchSettings, store: Store) -> None:
    """The results table and where the exported files are."""
    print()
    print(store.read_text("results.md") or "", end="")
    print(f"\nfiles in {settings.search_uri}/:")
    print("  <study>_best.py         best config per study (official paramfile: gru4rec run TRAIN -pf FILE)")
    print("  <study>_best.model      that config retrained on train_full")
    print("  results.csv, results.md the table above")
    print("  <study>_history.png, <study>_importance.png   optimisation history and parameter importance")
    print("  trials/                 Tune experiment of all studies: trials, their metrics, TensorBoard logs")
    print("  optuna.journal          the Optuna studies (optuna-dashboard can open it)")


def cmd_status(args: argparse.Namespace) -> int:
    """Print each study's progress, best config so far and disk use (reads the saved state only)."""
    settings, store = load_settings(args.name, args.storage)
    print(f"search {settings.name} in {settings.search_uri}: {settings.trials} trials x {settings.epochs} epochs "
          f"per study, {settings.max_concurrent or '?'} at once")
    holder = driver_line(store)
    if holder:
        print(f"driver: {holder}")
    header = (f"{'study':<16} {'ended':>9} {'running':>8} {'stopped':>8} {'diverged':>9} {'failed':>7} "
              f"{'best MRR@20':>12}  best config")
    print(header)
    notes = []
    written = 0
    for p in study_progress(settings, settings.plans()).values():
        plan = p.plan
        written += sum(r.checkpoint_bytes for r in p.records or [])
        if not p.started:
            print(f"{plan.name:<16} {'not started':>9}")
            continue
        top = best(p.records)
        done = "finalized" if store.exists(f"{plan.name}_result.json") else ""
        score = f"{top.final_mrr:.4f}" if top and top.final_mrr is not None else "-"
        config = ",".join(f"{k}={tidy_value(v)}" for k, v in (top.params if top else {}).items())
        t = p.tally
        print(f"{plan.name:<16} {f'{p.ended}/{settings.trials}':>9} {t[Outcome.RUNNING]:>8} {t[Outcome.STOPPED]:>8} "
              f"{t[Outcome.DIVERGED]:>9} {t[Outcome.FAILED]:>7} {score:>12}  {config} {done}".rstrip())
        notes += correlation_notes(plan.name, rung_correlations(p.records, settings.epochs, settings.grace_period,
                                                                settings.reduction_factor))
        if settings.early_stopping in RUNG_RULES:
            decisions = from_histories({r.trial_id: r.mrr for r in p.records}, settings.epochs,
                                       rung_epochs(settings.epochs, settings.grace_period, settings.reduction_factor),
                                       settings.reduction_factor, RUNG_RULES[settings.early_stopping])
            notes.append(f"- {plan.name}: {settings.early_stopping} early stopping: {describe(decisions.report())}")
    bound = f"{settings.disk_bound / 2**20:,.1f} MB" if settings.disk_bound else "unknown"
    print(f"disk: {EXPERIMENT}/ holds {store.size(EXPERIMENT) / 2**20:,.1f} MB; its checkpoints stay below {bound}")
    print(f"written: {written / 2**20:,.1f} MB of training states so far (a trial saves its state after epochs "
          f"{', '.join(map(str, settings.saved_epochs()))})")
    for line in notes:
        print(line)
    return 0


def tidy_value(value) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


def saved_resources(settings: SearchSettings) -> Resources:
    """The trial resources the search was started with (saved in search.json)."""
    from .cluster import Resources
    return Resources(cpus=settings.cpus_per_trial, gpus=settings.gpus_per_trial or 0.0,
                     max_concurrent=settings.max_concurrent or 1, study_gpus=settings.study_gpus)


def cmd_export(args: argparse.Namespace) -> int:
    """Rewrite paramfiles, tables and plots from the saved results, without Ray or training."""
    from .finalize import export
    settings, store = load_settings(args.name, args.storage)
    export(settings, store, saved_resources(settings))
    print_outputs(settings, store)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the search's studies (the journal file, or the RDB), while the search runs or after."""
    import optuna_dashboard

    from .study import optuna_storage
    settings, store = load_settings(args.name, args.storage)
    storage = optuna_storage(settings, store)
    print(f"Optuna dashboard of search {settings.name}: http://{args.host}:{args.port}/dashboard "
          f"(studies {', '.join(settings.optuna_study_name(p) for p in settings.plans())}); Ctrl-C stops it",
          flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def _ray_options(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that start or join Ray."""
    parser.add_argument("--address", help="Ray cluster to join: auto, ray://HEAD:10001 (default: a local Ray)")
    parser.add_argument("--local-cpus", type=int, help="CPUs of the local Ray (default: all of this machine)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray)")
    parser.add_argument("--quiet", action="store_true", help="no Tune progress tables or worker logs here")


def build_parser() -> argparse.ArgumentParser:
    """The gru4rec-search command line: run, resume, status, export, dashboard."""
    parser = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = commands.add_parser("run", help="start a search: one study per loss x embedding mode")
    for option in ("--train", "--valid", "--train-full", "--test"):
        run.add_argument(option, required=True, help=f"the {option[2:]} split (TSV, CSV, Parquet; pickle with "
                                                     "--allow-pickle)")
    run.add_argument("--name", required=True, help="name of the search (a folder under --storage)")
    run.add_argument("--losses", default="xe,bpr-max", help="comma-separated: xe, bpr-max (default: both)")
    run.add_argument("--modes", default="none,separate,shared", help="embedding modes (default: all three)")
    run.add_argument("--trials", type=int, default=200, help="trials per study (default: 200)")
    run.add_argument("--epochs", type=int, default=10, help="epochs of a full trial and of the retrain (default: 10)")
    run.add_argument("--space", help="space file for all losses, or xe=FILE,bpr-max=FILE (default: spaces/)")
    run.add_argument("--fixed", help="fixed parameters k=v,... (take them out of the space)")
    run.add_argument("--gpus-per-trial", type=gpu_share, default=None, metavar="SHARE|auto",
                     help="GPU share per trial, or auto: per study, as many trials per GPU as the memory model "
                          f"fits at the largest config of its space, at most {MAX_TRIALS_PER_GPU} (default: auto; "
                          "0 without GPUs)")
    run.add_argument("--gpu-memory", type=float, metavar="GIB",
                     help="memory of one GPU for auto shares (default: from Ray's accelerator type, else this "
                          "machine's GPU 0)")
    run.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                     help="on GPUs, run the steps of trials and retrains eagerly instead of capturing each in a CUDA "
                          "graph (for debugging and comparison; slower)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default: 1)")
    run.add_argument("--max-concurrent", type=int, help="trials at once (default: what the cluster fits)")
    run.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can be stopped")
    run.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep 1/r at each rung (default 3)")
    run.add_argument("--early-stopping", choices=EARLY_STOPPING, default="predicted",
                     help="asha: each rung keeps the top 1/r; calibrated: each rung keeps between all and the top 1/r "
                          "of the trials, as its rank correlation with the last epoch, measured on the study's own "
                          "trials, allows; predicted: a rung stops a trial when its final MRR@20, predicted from its "
                          "rung value by a fit on the study's trials that ran to the end, is unlikely to beat the "
                          "study's best (default: predicted; bench/README.md compares them)")
    run.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="K",
                     help="a trial saves its training state at ASHA's rungs, at its last epoch, and so that at most K "
                          f"epochs pass between two saves (0: rungs and last epoch only; default {CHECKPOINT_EVERY})")
    run.add_argument("--max-failures", type=int, default=2, help="retries of a trial whose worker dies")
    run.add_argument("--storage", default=DEFAULT_STORAGE,
                     help=f"results root: path or URI (default: {DEFAULT_STORAGE})")
    run.add_argument("--optuna-storage", help="an Optuna RDB for the studies, e.g. postgresql://... (default: the "
                                              "journal file optuna.journal in the search folder)")
    run.add_argument("--optuna-study", help="prefix of the Optuna study names (default: --name); reuse one to extend")
    run.add_argument("--seed", type=int, default=0, help="seed of the TPE samplers (default: 0)")
    run.add_argument("--top-k", type=int, default=3,
                     help="best configs of each study trained again with several seeds to pick one (default: 3)")
    run.add_argument("--seeds", type=int, default=3, help="seeds of each of those trainings (default: 3)")
    run.add_argument("--studies", choices=POLICIES, default="shared",
                     help="shared: the studies run at once, splitting the trial slots (a study that has started "
                          "all its trials leaves its slots to the others); sequential: one after another "
                          "(default: shared)")
    run.add_argument("--warm-start", metavar="SOURCES",
                     help="configs each study evaluates first: 'best' (the published best configs and the defaults) "
                          "and/or earlier searches (folder, or name under --storage), comma-separated")
    run.add_argument("--allow-pickle", action="store_true",
                     help="allow .pickle/.pkl splits (unpickling runs code from the file: only files you trust)")
    _ray_options(run)
    run.set_defaults(func=cmd_run)

    resume = commands.add_parser("resume", help="continue a search after a stop; no ended trial is run again")
    resume.add_argument("name")
    resume.add_argument("--storage", default=DEFAULT_STORAGE)
    resume.add_argument("--retry-failed", action="store_true",
                        help="also run failed trials again, from scratch (default: they stay failed)")
    resume.add_argument("--trials", type=int, help="raise the trials per study (a finished search runs only the new "
                                                   "ones, then finalizes again)")
    _ray_options(resume)
    resume.set_defaults(func=cmd_resume)

    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the search's Optuna studies")
    dashboard.add_argument("name")
    dashboard.add_argument("--storage", default=DEFAULT_STORAGE)
    dashboard.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    dashboard.set_defaults(func=cmd_dashboard)

    for command, func, text in (("status", cmd_status, "progress of every study, best config so far, disk use"),
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
