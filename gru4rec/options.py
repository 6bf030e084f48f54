"""Command-line building blocks shared by the `gru4rec` commands and the plug-ins that add commands to it.

Options and their checks live here once, so that `gru4rec run`, `gru4rec paropt` and any other command
read data, choose devices, report and fail the same way.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import torch

from .checkpoint import ModelFileError
from .config import ConfigError
from .data import DataError, SessionData, load_session_data
from .evaluate import TIE_MODES, EvalResult
from .files import probe_directory
from .sampling import DEFAULT_STORE_SIZE
from .train import TrainingError, default_device

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
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .pickle/.pkl data files (pickled DataFrames, as the official code reads them "
                             "with joblib); unpickling runs code from the file, so only for files you trust")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options of commands that train: sample store size, model variant, CPU threads."""
    parser.add_argument("-ss", "--sample_store_size", metavar="SS", type=int, default=DEFAULT_STORE_SIZE,
                        help=f"negative samples generated at once (default: {DEFAULT_STORE_SIZE:,})")
    parser.add_argument("-g", "--gru4rec_model", metavar="VARIANT", default=MODEL_VARIANTS[0],
                        help=f"model variant; this package has one: {', '.join(MODEL_VARIANTS)} (the default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training (default: the fastest of one, half and all of "
                             "torch's threads, timed on the first steps)")


def add_cuda_options(parser: argparse.ArgumentParser) -> None:
    """Switches of the CUDA path: graph capture off (`args.cuda_graphs` False, else None) and TF32 on."""
    parser.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                        help="on CUDA, run training and evaluation steps eagerly instead of capturing each in a "
                             "CUDA graph and replaying it (for debugging and comparison; slower)")
    parser.add_argument("--tf32", action="store_true",
                        help="on CUDA, let float32 matrix products use TF32 tensor cores (faster; inputs rounded to a "
                             "10-bit mantissa instead of 23; default: off, full float32)")


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """While the block runs, CUDA matrix products and cuDNN may use TF32 if `enabled`; the settings are
    restored afterwards, so that a caller in the same process keeps its own."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    if enabled:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def check_training_options(args: argparse.Namespace) -> None:
    """One-line errors for training options out of range, before any data is read."""
    if args.gru4rec_model not in MODEL_VARIANTS:
        raise UsageError(f"-g {args.gru4rec_model!r}: unknown model variant; available: {', '.join(MODEL_VARIANTS)}")
    if args.sample_store_size < 1:
        raise UsageError(f"-ss {args.sample_store_size}: the sample store needs a size >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be an integer >= 1")


def check_cutoffs(cutoffs: list[int], option: str) -> None:
    """Cut-offs must be given and positive; checked before any training."""
    if not cutoffs:
        raise UsageError(f"{option}: give one or more cut-offs, e.g. {option} 1 5 10 20")
    bad = [k for k in cutoffs if k < 1]
    if bad:
        raise UsageError(f"{option} {bad[0]}: a cut-off must be an integer >= 1")


def load_events(args: argparse.Namespace, path: str | Path, item_ids: pd.Index | None = None) -> SessionData:
    """An event file read with the command's column names and pickle switch."""
    return load_session_data(path, item_ids, session_key=args.session_key, item_key=args.item_key,
                             time_key=args.time_key, allow_pickle=args.allow_pickle)


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
        probe_directory(directory)
    except OSError as e:
        raise UsageError(f"{option} {path}: not writable ({e.strerror})") from None


def report(result: EvalResult, primary: str, log_primary: bool) -> None:
    """The official result lines, and 'PRIMARY METRIC: <value>' for the first cut-off if asked."""
    for line in result.lines():
        print(line)
    if log_primary:
        print(f"PRIMARY METRIC: {result.value(primary, result.cutoffs[0])}")
