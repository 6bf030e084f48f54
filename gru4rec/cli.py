"""The `gru4rec` command: `run` (the official run.py), `generate` (synthetic data), and plugged-in commands.

Other packages add subcommands through the `gru4rec.commands` entry-point group (a function that
registers a subparser), which is how `paropt` arrives without this package importing Optuna.
"""
from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from .checkpoint import load_model, save_model
from .config import Config, parse_param_string, read_param_file
from .datasets import preprocess
from .datasets.synthetic import SyntheticSpec, write_splits
from .evaluate import EVAL_BATCH, evaluate
from .options import (USER_ERRORS, UsageError, add_cuda_options, add_data_options, add_training_options,
                      check_cutoffs, check_training_options, check_writable, load_events, report, resolve_device,
                      terminal_progress, tf32)
from .train import Trainer

def read_params(args: argparse.Namespace) -> dict:
    if args.parameter_string is not None:
        return parse_param_string(args.parameter_string)
    return read_param_file(args.parameter_file)


def print_set_lines(params: dict, config: Config) -> None:
    """The official 'SET name TO value (type: ...)' lines for every parameter given."""
    for name in params:
        value = getattr(config, name)
        print(f"SET   {name}{' ' * max(1, 24 - len(name))}TO   {value}   (type: {type(value)})")


def cmd_run(args: argparse.Namespace) -> int:
    sources = [args.parameter_string is not None, args.parameter_file is not None, args.load_model]
    if sum(sources) != 1:
        raise UsageError("give exactly one of -ps (parameter string), -pf (parameter file) or -l (load model)")
    check_training_options(args)
    check_cutoffs(args.measure, "-m")
    device = resolve_device(args.device)
    with tf32(args.tf32):
        return train_and_evaluate(args, device)


def train_and_evaluate(args: argparse.Namespace, device: torch.device) -> int:
    """Train or load, save, and evaluate, as `cmd_run` checked the options for."""
    for test in args.test or []:
        if not Path(test).is_file():
            raise UsageError(f"-t {test}: no such file")
    if args.save_model:
        check_writable(Path(args.save_model), "-s")
    if args.load_model:
        print(f"Loading trained model from file: {args.path} (to device \"{device}\")")
        model, item_ids = load_model(args.path, device)
    else:
        params = read_params(args)
        config = Config.from_dict(params)
        print(f"Creating GRU4Rec model on device \"{device}\"")
        print_set_lines(params, config)
        print("Loading training data...")
        print(f"Loading data from file: {args.path}")
        train = load_events(args, args.path)
        item_ids = train.item_ids
    tests = []
    for test_path in args.test or []:
        print("Loading test data...")
        print(f"Loading data from file: {test_path}")
        tests.append(load_events(args, test_path, item_ids))
        tests[-1].check_schedule(EVAL_BATCH, "predict")  # before hours of training, not after
        if tests[-1].n_dropped:
            print(f"Dropped {tests[-1].n_dropped} test events whose item is not in the training item map")
    if not args.load_model:
        print("Started training")
        start = time.perf_counter()
        trainer = Trainer(config, train, device=device, store_size=args.sample_store_size, threads=args.threads,
                          cuda_graphs=args.cuda_graphs)
        trainer.fit(callback=lambda info: print(info.line(), flush=True), progress=terminal_progress)
        print(f"Total training time: {time.perf_counter() - start:.2f}s")
        model = trainer.model
        if args.save_model:
            print(f"Saving trained model to: {args.save_model}")
            save_model(args.save_model, model, item_ids)
    for test in tests:
        print(f"Starting evaluation (cut-off={args.measure}, using {args.eval_type} mode for tiebreaking)")
        start = time.perf_counter()
        result = evaluate(model, test, args.measure, args.eval_type, progress=terminal_progress,
                          cuda_graphs=args.cuda_graphs)
        print(f"Evaluation took {time.perf_counter() - start:.2f}s ({result.n} predictions)")
        report(result, args.primary_metric, args.log_primary_metric)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.events < 100:
        raise UsageError(f"--events {args.events}: generate at least 100 events (four splits of sessions)")
    if args.items is not None and args.items < 2:
        raise UsageError(f"--items {args.items}: need at least 2 items")
    spec = SyntheticSpec(n_events=args.events, n_items=args.items, seed=args.seed)
    if not 0 < args.test_days < spec.days / 2:
        raise UsageError(f"--test-days {args.test_days}: must be > 0 and under half of the {spec.days:g} days "
                         "generated (two test windows come off their end)")
    paths = write_splits(args.out_dir, spec, test_days=args.test_days, formats=(args.format,))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_run_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="train and/or evaluate a model (the official run.py)",
        description="Train GRU4Rec on PATH (or load a saved model from PATH with -l), optionally save it, "
                    "and evaluate it on one or more test files.")
    p.add_argument("path", help="training data: .csv comma-separated, .parquet, .pickle/.pkl with --allow-pickle, "
                                "any other name TAB-separated (as the official run.py); or the saved model with -l")
    source = p.add_argument_group("model source (exactly one)")
    source.add_argument("-ps", "--parameter_string", metavar="PARAM_STRING",
                        help="parameters as name=value pairs separated by commas, lists with '/', "
                             "e.g. loss=bpr-max,layers=100/100,embedding=layersize")
    source.add_argument("-pf", "--parameter_file", metavar="PARAM_PATH",
                        help="parameter file: the official Python form (gru4rec_params = OrderedDict([...]), "
                             "read without executing it) or JSON")
    source.add_argument("-l", "--load_model", action="store_true",
                        help="PATH is a model saved with -s: load it instead of training")
    p.add_argument("-s", "--save_model", metavar="MODEL_PATH", help="save the trained model to this file")
    p.add_argument("-t", "--test", metavar="TEST_PATH", nargs="+", help="test files, each evaluated in turn")
    p.add_argument("-m", "--measure", metavar="AT", type=int, nargs="+", default=[20],
                   help="cut-offs of recall and MRR (default: 20)")
    p.add_argument("-lpm", "--log_primary_metric", action="store_true",
                   help="also print 'PRIMARY METRIC: <value>' for the first cut-off")
    add_training_options(p)
    add_cuda_options(p)
    add_data_options(p)
    p.set_defaults(func=cmd_run)


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="write synthetic session data (train_full, test, train_tr, train_valid)",
        description=f"Generate {SyntheticSpec.days:g} days of sessions, each following a latent intent (one of "
                    f"{SyntheticSpec.n_intents} overlapping groups of items; Zipf popularity overall and inside each): "
                    "the next item is a successor of the previous one within the intent, a step back to the item "
                    "before it, or a popular item of the intent. A first-order Markov model sees only the previous "
                    "item, so a sequence model beats it. The sessions of the last --test-days days are the test "
                    "split; the same split of the rest gives train_tr and train_valid.")
    p.add_argument("out_dir", help="directory for the four splits, replaced as a whole: a new one, or one that holds "
                                   "only these files")
    p.add_argument("--events", type=int, default=100_000, help="number of events (default: 100000)")
    p.add_argument("--items", type=int, default=None, help="number of items (default: events / 25, within 50..1000000)")
    p.add_argument("--test-days", type=float, default=1.0,
                   help=f"days of sessions in each test split, under {SyntheticSpec.days / 2:g} (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data (default: 0)")
    p.add_argument("--format", choices=("tsv", "parquet"), default="tsv",
                   help="tsv: TAB-separated with header SessionId, ItemId, Time; parquet: faster to load "
                        "(default: tsv)")
    p.set_defaults(func=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gru4rec", description="GRU4Rec: train, evaluate and tune session-based "
                                                                 "recommenders.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(subparsers)
    preprocess.add_parser(subparsers)
    add_generate_parser(subparsers)
    for plugin in entry_points(group="gru4rec.commands"):
        plugin.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, *USER_ERRORS) as e:
        print(f"gru4rec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
