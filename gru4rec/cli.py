"""The `gru4rec` command: `run` (the official run.py), `generate` (synthetic data), and plugged-in commands.

Other packages add subcommands through the `gru4rec.commands` entry-point group (a function that
registers a subparser), which is how `paropt` arrives without this package importing Optuna.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import __version__
from .checkpoint import ModelFileError, load_model, save_model
from .config import Config, ConfigError, parse_param_string, read_param_file
from .data import DataError, load_session_data
from .datasets import preprocess
from .datasets.synthetic import SyntheticSpec, write_splits
from .evaluate import TIE_MODES, EvalResult, evaluate
from .sampling import DEFAULT_STORE_SIZE
from .train import EpochInfo, Trainer, TrainingError, default_device

MODEL_VARIANTS = ("gru4rec_pytorch",)
USER_ERRORS = (ConfigError, DataError, ModelFileError, TrainingError, ValueError, OSError)


class UsageError(Exception):
    """A command-line problem reported as one line, before any work is done."""


def terminal_progress(iterable: Iterable, desc: str) -> Iterable:
    """A progress bar when stdout is a terminal; the plain iterable otherwise (logs stay clean)."""
    if not sys.stdout.isatty():
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that read event files and train or evaluate."""
    parser.add_argument("-e", "--eval_type", choices=TIE_MODES, default="standard",
                        help="tie-breaking of equal scores in evaluation: standard counts items scored strictly "
                             "higher, conservative also counts ties, median counts half of the ties "
                             "(default: standard)")
    parser.add_argument("-d", "--device", default=None,
                        help="device to train and evaluate on, e.g. cpu, cuda, cuda:1 (default: cuda if present, "
                             "else cpu)")
    parser.add_argument("-ik", "--item_key", default="ItemId", help="item id column (default: ItemId)")
    parser.add_argument("-sk", "--session_key", default="SessionId", help="session id column (default: SessionId)")
    parser.add_argument("-tk", "--time_key", default="Time", help="timestamp column (default: Time)")
    parser.add_argument("-pm", "--primary_metric", choices=("recall", "mrr"), default="recall",
                        help="metric reported as the primary one (default: recall)")


def resolve_device(name: str | None) -> torch.device:
    """The device to use, with a clear error for a malformed or absent one."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"-d {name!r}: not a device name (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"-d {name!r}: CUDA is not available on this machine; use -d cpu")
    return device


def check_writable(path: Path, option: str) -> None:
    """Fail early when an output file could not be written, instead of after hours of training."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{option} {path}: directory {directory} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: not writable ({e.strerror})") from None


def read_params(args: argparse.Namespace) -> dict:
    if args.parameter_string is not None:
        return parse_param_string(args.parameter_string)
    return read_param_file(args.parameter_file)


def print_set_lines(params: dict, config: Config) -> None:
    """The official 'SET name TO value (type: ...)' lines for every parameter given."""
    for name in params:
        value = getattr(config, name)
        print(f"SET   {name}{' ' * max(1, 24 - len(name))}TO   {value}   (type: {type(value)})")


def report(result: EvalResult, primary: str, log_primary: bool) -> None:
    for line in result.lines():
        print(line)
    if log_primary:
        first = result.cutoffs[0]
        value = result.recall[first] if primary == "recall" else result.mrr[first]
        print(f"PRIMARY METRIC: {value}")


def cmd_run(args: argparse.Namespace) -> int:
    sources = [args.parameter_string is not None, args.parameter_file is not None, args.load_model]
    if sum(sources) != 1:
        raise UsageError("give exactly one of -ps (parameter string), -pf (parameter file) or -l (load model)")
    if args.gru4rec_model not in MODEL_VARIANTS:
        raise UsageError(f"-g {args.gru4rec_model!r}: unknown model variant; available: {', '.join(MODEL_VARIANTS)}")
    device = resolve_device(args.device)
    for test in args.test or []:
        if not Path(test).is_file():
            raise UsageError(f"-t {test}: no such file")
    if args.save_model:
        check_writable(Path(args.save_model), "-s")
    keys = dict(session_key=args.session_key, item_key=args.item_key, time_key=args.time_key)
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
        train = load_session_data(args.path, **keys)
        item_ids = train.item_ids
    tests = []
    for test_path in args.test or []:
        print("Loading test data...")
        print(f"Loading data from file: {test_path}")
        tests.append(load_session_data(test_path, item_ids, **keys))
        if tests[-1].n_dropped:
            print(f"Dropped {tests[-1].n_dropped} test events whose item is not in the training item map")
    if not args.load_model:
        print("Started training")
        start = time.perf_counter()
        trainer = Trainer(config, train, device=device, store_size=args.sample_store_size)
        trainer.fit(callback=lambda info: print(info.line(), flush=True), progress=terminal_progress)
        print(f"Total training time: {time.perf_counter() - start:.2f}s")
        model = trainer.model
        if args.save_model:
            print(f"Saving trained model to: {args.save_model}")
            save_model(args.save_model, model, item_ids)
    for test in tests:
        print(f"Starting evaluation (cut-off={args.measure}, using {args.eval_type} mode for tiebreaking)")
        start = time.perf_counter()
        result = evaluate(model, test, args.measure, args.eval_type, progress=terminal_progress)
        print(f"Evaluation took {time.perf_counter() - start:.2f}s ({result.n} predictions)")
        report(result, args.primary_metric, args.log_primary_metric)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    spec = SyntheticSpec(n_events=args.events, n_items=args.items, seed=args.seed)
    paths = write_splits(args.out_dir, spec, test_days=args.test_days)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_run_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="train and/or evaluate a model (the official run.py)",
        description="Train GRU4Rec on PATH (or load a saved model from PATH with -l), optionally save it, "
                    "and evaluate it on one or more test files.")
    p.add_argument("path", help="training data (.tsv/.txt TAB-separated, .csv, .parquet, .pickle/.pkl), or the "
                                "saved model when -l is given")
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
    p.add_argument("-ss", "--sample_store_size", metavar="SS", type=int, default=DEFAULT_STORE_SIZE,
                   help=f"negative samples generated at once (default: {DEFAULT_STORE_SIZE:,})")
    p.add_argument("-g", "--gru4rec_model", metavar="VARIANT", default=MODEL_VARIANTS[0],
                   help=f"model variant; this package has one: {', '.join(MODEL_VARIANTS)} (the default)")
    p.add_argument("-lpm", "--log_primary_metric", action="store_true",
                   help="also print 'PRIMARY METRIC: <value>' for the first cut-off")
    add_data_options(p)
    p.set_defaults(func=cmd_run)


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="write synthetic session data (train_full, test, train_tr, train_valid)",
        description="Generate sessions with Zipf item popularity and sparse Markov transitions, split by time.")
    p.add_argument("out_dir", help="directory for the four .tsv splits")
    p.add_argument("--events", type=int, default=100_000, help="number of events (default: 100000)")
    p.add_argument("--items", type=int, default=None, help="number of items (default: events / 25)")
    p.add_argument("--test-days", type=float, default=1.0, help="days of sessions in each test split (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
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
