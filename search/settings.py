"""A search's settings and folder: search.json and the store its files live in (its driver's lock: lease.py).

Layout under the storage root (a local path, NFS, or a URI such as s3://bucket/prefix):
    NAME/search.json         the settings, written before Ray starts (resume, status and export read them)
    NAME/driver.lock         who runs the search now (host, pid, start time; on object storage a lease)
    NAME/optuna.journal      the Optuna studies (journal storage); on object storage a host's local copy is
                             pushed as pieces to NAME/optuna.journal.parts/ (journal.py)
    NAME/trials/             the Tune experiment of all studies: trials, their metrics and last checkpoints
    NAME/<study>_result.json the retrained best config of a finalized study; exports beside it
The folder's name is the search's name: a copied or renamed folder is a search of its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs

from gru4rec.files import atomic_path, probe_directory

from .ledger import checkpoint_epochs
from .spaces import StudyPlan, parse_space, plan_study

SETTINGS_FILE = "search.json"
LOCK_FILE = "driver.lock"
JOURNAL_FILE = "optuna.journal"
EXPERIMENT = "trials"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_STORAGE = "~/gru4rec-search"
FINGERPRINT_BYTES = 1 << 20
POLICIES = ("shared", "sequential")
EARLY_STOPPING = ("asha", "calibrated", "predicted")
MAX_TRIALS_PER_GPU = 4  # trials of a study sharing one GPU at most; the GPU measurement (bench/gpu_check.py) sets it
# Epochs between saved training states beyond ASHA's rungs and the last epoch: at 10 epochs with the default
# rungs (1, 3, 9) it adds none, so a trial writes 4 states instead of 10, and a kill costs at most 5 epochs.
CHECKPOINT_EVERY = 6


class SearchError(RuntimeError):
    """The search cannot start or go on; the message is one line for the user."""


def is_uri(storage: str) -> bool:
    return "://" in storage


def resolve_storage(storage: str) -> str:
    """A URI unchanged, or a local path made absolute (Ray needs absolute local storage paths)."""
    if is_uri(storage):
        return storage.rstrip("/")
    return os.path.abspath(os.path.expanduser(storage))


def absolute_database_url(url: str | None) -> str | None:
    """sqlite:///relative.db made absolute, so that a resume from another directory finds the same file."""
    if not url or not url.startswith("sqlite:///") or url.startswith("sqlite:////"):
        return url
    return "sqlite:///" + os.path.abspath(url[len("sqlite:///"):])


def fingerprint(path: str | os.PathLike) -> str:
    """Size and a hash of the first and last MB of a file: enough to notice a changed data file."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return f"{size}:{digest.hexdigest()[:16]}"


SPLITS = (("train", "--train"), ("valid", "--valid"), ("train_full", "--train-full"), ("test", "--test"))


@dataclass
class SearchSettings:
    """Everything a search needs; saved as NAME/search.json so that `resume`, `status` and `export` agree."""

    name: str
    train: str
    valid: str
    train_full: str
    test: str
    losses: list[str]
    modes: list[str]
    spaces: dict[str, dict[str, str]]  # loss -> {"source": file, "text": JSON Lines}
    fixed: dict[str, str] = field(default_factory=dict)
    trials: int = 200
    epochs: int = 10
    storage: str = DEFAULT_STORAGE
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: auto, each study's share from the memory model (resolved at `run`)
    gpu_memory: float | None = None  # GiB of one GPU for auto shares; None: Ray's accelerator type or this GPU
    study_gpus: dict[str, float] = field(default_factory=dict)  # per-study GPU shares resolved by auto at `run`
    max_concurrent: int | None = None  # None: as many trials as the cluster's resources fit (resolved at `run`)
    grace_period: int = 1
    reduction_factor: float = 3.0
    # "calibrated", "predicted" (the command line's default): rungs that learn how hard to cut (calibration.py);
    # "asha" is what a search saved before the option existed used
    early_stopping: str = "asha"
    checkpoint_every: int = CHECKPOINT_EVERY  # at most this many epochs between two saved training states
    cuda_graphs: bool = True  # False: trials and retrains on CUDA run their steps eagerly (--no-cuda-graphs)
    max_failures: int = 2
    optuna_storage: str | None = None  # an RDB URL; None: the journal file of the search folder
    optuna_study: str | None = None  # prefix of the Optuna study names (set to the name at `run`)
    allow_pickle: bool = False
    top_k: int = 3  # configs of a study retrained for the final choice
    seeds: int = 3  # seeds of each retrain
    policy: str = "shared"  # how the studies share the trial slots: "shared" or "sequential"
    warm_start: list[str] = field(default_factory=list)  # "best" and/or earlier searches' folders
    fingerprints: dict[str, str] = field(default_factory=dict)  # split -> fingerprint, taken at `run`
    disk_bound: int = 0  # bytes the checkpoints of the search may take (resolved at `run`)

    def validate(self) -> None:
        """Raise SearchError for any setting that cannot work (before data, storage or Ray are touched)."""
        if not NAME_PATTERN.match(self.name):
            raise SearchError(f"--name {self.name!r}: use letters, digits, '_', '.' and '-' only")
        checks = [("--trials", self.trials >= 1, "an integer >= 1"), ("--epochs", self.epochs >= 1, "an integer >= 1"),
                  ("--cpus-per-trial", self.cpus_per_trial > 0, "a number > 0"),
                  ("--gpus-per-trial", self.gpus_per_trial is None or self.gpus_per_trial >= 0,
                   "auto or a number >= 0"),
                  ("--gpu-memory", self.gpu_memory is None or self.gpu_memory > 0, "a number of GiB > 0"),
                  ("--max-concurrent", self.max_concurrent is None or self.max_concurrent >= 1, "an integer >= 1"),
                  ("--grace-period", 1 <= self.grace_period <= self.epochs,
                   f"an integer in 1..{self.epochs} (--epochs)"),
                  ("--reduction-factor", self.reduction_factor > 1, "a number > 1"),
                  ("--early-stopping", self.early_stopping in EARLY_STOPPING, f"one of {', '.join(EARLY_STOPPING)}"),
                  ("--checkpoint-every", self.checkpoint_every >= 0, "an integer >= 0"),
                  ("--max-failures", self.max_failures >= 0, "an integer >= 0"),
                  ("--top-k", self.top_k >= 1, "an integer >= 1"), ("--seeds", self.seeds >= 1, "an integer >= 1"),
                  ("--studies", self.policy in POLICIES, f"one of {', '.join(POLICIES)}")]
        for option, ok, allowed in checks:
            if not ok:
                raise SearchError(f"{option} must be {allowed}")
        self.plans()

    def plans(self) -> list[StudyPlan]:
        """The studies of this search, loss by loss and mode by mode."""
        plans = []
        for loss in self.losses:
            space = parse_space(self.spaces[loss]["text"], self.spaces[loss]["source"])
            for mode in self.modes:
                plans.append(plan_study(loss, mode, self.epochs, space, self.fixed))
        return plans

    def data_paths(self) -> dict[str, str]:
        """The four splits by field name."""
        return {split: getattr(self, split) for split, _ in SPLITS}

    def make_paths_absolute(self) -> None:
        """Data files and an sqlite URL made absolute, so that a resume from any directory finds them."""
        for split, _ in SPLITS:
            setattr(self, split, os.path.abspath(getattr(self, split)))
        self.optuna_storage = absolute_database_url(self.optuna_storage)

    def check_data(self) -> None:
        """A one-line error for the first split that is missing or changed since the search started."""
        for split, option in SPLITS:
            path = getattr(self, split)
            if not Path(path).is_file():
                raise SearchError(f"{option} {path}: no such file")
            recorded = self.fingerprints.get(split)
            if recorded is not None and fingerprint(path) != recorded:
                raise SearchError(f"{option} {path}: the file changed since the search started "
                                  f"(fingerprint {fingerprint(path)}, recorded {recorded}); restore it or start "
                                  "a new search")

    def take_fingerprints(self) -> None:
        self.fingerprints = {split: fingerprint(getattr(self, split)) for split, _ in SPLITS}

    def saved_epochs(self) -> list[int]:
        """The epochs after which a trial of the search saves its training state."""
        return checkpoint_epochs(self.epochs, self.grace_period, self.reduction_factor, self.checkpoint_every)

    @property
    def search_uri(self) -> str:
        """Where this search's files live: STORAGE/NAME."""
        return f"{resolve_storage(self.storage)}/{self.name}"

    @property
    def experiment_uri(self) -> str:
        """Where the search's Tune experiment (the trials of every study) lives: STORAGE/NAME/trials."""
        return f"{self.search_uri}/{EXPERIMENT}"

    def optuna_study_name(self, plan: StudyPlan) -> str:
        """The Optuna study name (prefix/<study>), shared by runs that extend a study."""
        return f"{self.optuna_study or self.name}/{plan.name}"

    def to_json(self) -> str:
        """The settings as the text of search.json."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "SearchSettings":
        """Settings from the text of search.json, with a one-line error naming what is wrong in it."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise SearchError(f"{source}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(values, dict):
            raise SearchError(f"{source}: not a search settings file (expected one JSON object)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SearchError(f"{source}: unknown setting {unknown[0]!r}")
        missing = [name for name, f in fields.items() if name not in values and
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SearchError(f"{source}: missing setting {missing[0]!r}")
        for name, value in values.items():
            if not _matches(value, hints[name]):
                raise SearchError(f"{source}: setting {name!r} has the wrong type ({value!r})")
        settings = cls(**values)
        try:
            settings.validate()
        except (SearchError, ValueError) as e:
            raise SearchError(f"{source}: {e}") from None
        return settings


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a settings field's type (int accepted for float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _matches(v, args[1]) for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def write_atomically(fs: pyarrow.fs.FileSystem, path: str, payload: bytes) -> None:
    """Write `path` through a temporary name unique to this writer and a rename, on a local disk, NFS or
    object storage alike: readers never see half a file, and a failed write leaves no temporary behind."""
    directory = os.path.dirname(path)
    fs.create_dir(directory, recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload)
        return
    tmp = f"{directory}/.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(payload)
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pyarrow.fs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


class Store:
    """Small files of one search under its storage root, through pyarrow.fs (local, NFS, S3, GCS)."""

    def __init__(self, uri: str):
        self.uri = uri
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)
        except (pyarrow.ArrowInvalid, OSError) as e:
            raise SearchError(f"storage {uri}: cannot be used ({e})") from None
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def path(self, name: str) -> str:
        """The filesystem path of a file of this search."""
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        """Whether a file of this search exists."""
        return self.fs.get_file_info(self.path(name)).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str | None:
        """The file's text, or None when it does not exist."""
        return None if (data := self.read_bytes(name)) is None else data.decode()

    def read_bytes(self, name: str) -> bytes | None:
        if not self.exists(name):
            return None
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.readall()

    def write(self, name: str, data: bytes | str) -> None:
        """Write through a temporary name unique to this writer, then rename: readers never see half a file."""
        write_atomically(self.fs, self.path(name), data.encode() if isinstance(data, str) else data)

    def list(self, folder: str) -> list[str]:
        """The names of the files in a folder of this search (none if it does not exist)."""
        entries = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path(folder), allow_not_found=True))
        return sorted(e.base_name for e in entries if e.type == pyarrow.fs.FileType.File)

    def delete(self, name: str) -> None:
        if self.exists(name):
            self.fs.delete_file(self.path(name))

    def size(self, name: str = "") -> int:
        """Bytes of a file or, for a folder, of everything under it."""
        path = self.path(name).rstrip("/")
        info = self.fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            return info.size
        if info.type == pyarrow.fs.FileType.NotFound:
            return 0
        return sum(i.size or 0 for i in self.fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
                   if i.type == pyarrow.fs.FileType.File)

    def check_writable(self) -> None:
        """Create the root and try writing in it; a one-line SearchError if that fails."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            if self.local:
                probe_directory(self.root)
            else:
                self.write(".write-probe", b"")
                self.delete(".write-probe")
        except OSError as e:
            reason = e.strerror or str(e).splitlines()[0]
            raise SearchError(f"storage {self.uri}: not writable ({reason})") from None
