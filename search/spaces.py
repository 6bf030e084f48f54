"""Parameter spaces (JSON Lines) as Optuna distributions, and the fixed parameters of every study.

A space file holds one JSON object per line (the format of the official paropt.py):
`{"name": ..., "dtype": "int"|"float"|"categorical", "values": [low, high] | [options...], "step": ..., "log": false}`.
A study is one loss x embedding mode; its fixed parameters are those of the published searches (n_sample
2048, logq 1 for cross-entropy, the embedding settings of the mode) with the user's `--fixed` values on top.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from gru4rec import Config, ConfigError, parse_param_string
from gru4rec.config import LOSS_ALIASES

def _spaces_dir() -> Path:
    """spaces/ of the source tree (editable install), else the copy a regular install puts under share/."""
    source = Path(__file__).resolve().parents[1] / "spaces"
    return source if source.is_dir() else Path(sysconfig.get_path("data")) / "share" / "gru4rec" / "spaces"


SPACES_DIR = _spaces_dir()
LOSS_TOKENS = {"cross-entropy": "xe", "bpr-max": "bprmax"}  # as in the official file names
MODES: dict[str, dict[str, Any]] = {
    "none": {"embedding": 0, "constrained_embedding": False},
    "separate": {"embedding": "layersize", "constrained_embedding": False},
    "shared": {"embedding": 0, "constrained_embedding": True},
}
# Set by the study itself (loss, embedding mode, epoch budget), so neither a space nor --fixed may set them.
STUDY_PARAMS = {"loss": "--losses", "embedding": "--modes", "constrained_embedding": "--modes",
                "n_epochs": "--epochs"}
DTYPES = ("int", "float", "categorical")
LINE_KEYS = {"name", "dtype", "values", "step", "log"}
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(Config))

Space = dict[str, BaseDistribution]


class SpaceError(ValueError):
    """A space file, a --fixed value, a loss or a mode cannot be used; the message says where and why."""


def default_space_file(loss: str) -> Path:
    """The published space of a loss: spaces/xe.jsonl or spaces/bpr-max.jsonl."""
    return SPACES_DIR / ("xe.jsonl" if loss == "cross-entropy" else "bpr-max.jsonl")


def read_space_text(path: str | os.PathLike) -> str:
    """The text of a space file, with a one-line error if it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise SpaceError(f"{path}: cannot read space file ({e.strerror})") from None


def parse_space(text: str, source: str = "space", study_rules: bool = True) -> Space:
    """Parse JSON Lines space text into Optuna distributions, checking every value against Config.

    With `study_rules` (the searches of gru4rec-search) the parameters a study sets itself and the seed
    are refused; `gru4rec paropt`, like the official paropt.py, searches any parameter.
    """
    space: Space = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}: line {lineno}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpaceError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(entry, dict):
            raise SpaceError(f"{where}: expected a JSON object like "
                             '{"name": "layers", "dtype": "int", "values": [64, 512], "step": 32}')
        name, dist = _parse_entry(entry, where, study_rules)
        if name in space:
            raise SpaceError(f"{where}: parameter {name!r} appears twice")
        space[name] = dist
    if not space:
        raise SpaceError(f"{source}: the space has no parameters")
    return space


def load_space(path: str | os.PathLike, study_rules: bool = True) -> Space:
    """Read and parse a space file (see `parse_space`)."""
    return parse_space(read_space_text(path), str(path), study_rules)


def _parse_entry(entry: dict[str, Any], where: str, study_rules: bool) -> tuple[str, BaseDistribution]:
    """Check one space line and turn it into (name, distribution)."""
    unknown = sorted(set(entry) - LINE_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown key {unknown[0]!r} (allowed: name, dtype, values, step, log)")
    missing = [k for k in ("name", "dtype", "values") if k not in entry]
    if missing:
        raise SpaceError(f"{where}: missing key {missing[0]!r}")
    name, dtype, values = entry["name"], entry["dtype"], entry["values"]
    if not isinstance(name, str) or name not in CONFIG_FIELDS:
        raise SpaceError(f"{where}: unknown parameter {name!r}; known parameters: {', '.join(CONFIG_FIELDS)}")
    if study_rules and name in STUDY_PARAMS:
        raise SpaceError(f"{where}: {name} is set by the study ({STUDY_PARAMS[name]}), not by the space")
    if study_rules and name == "seed":
        raise SpaceError(f"{where}: seed cannot be searched; fix it with --fixed seed=N")
    if dtype not in DTYPES:
        raise SpaceError(f"{where}: {name}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    where = f"{where}: {name}"
    if dtype == "categorical":
        dist = _categorical(values, entry, where)
        options = list(dist.choices)
    else:
        dist = _numeric(dtype, values, entry, where)
        options = [dist.low, dist.high]
    for value in options:
        try:
            Config.from_dict({name: value})
        except ConfigError as e:
            raise SpaceError(f"{where}: value {value!r} is not allowed ({e})") from None
    return name, dist


def _categorical(values: Any, entry: dict[str, Any], where: str) -> CategoricalDistribution:
    """A categorical distribution from a list of distinct JSON scalars."""
    if "step" in entry or "log" in entry:
        raise SpaceError(f"{where}: step and log apply to int and float parameters only")
    if not isinstance(values, list) or not values:
        raise SpaceError(f"{where}: values must be a non-empty list of options")
    if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
        raise SpaceError(f"{where}: options must be numbers, strings, booleans or null")
    if len({json.dumps(v) for v in values}) != len(values):
        raise SpaceError(f"{where}: options must be distinct")
    return CategoricalDistribution(values)


def _is_number(v: Any) -> bool:
    """A finite int or float, not a bool (JSON true would pass isinstance int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numeric(dtype: str, values: Any, entry: dict[str, Any], where: str) -> BaseDistribution:
    """An int or float distribution from [low, high] with optional step or log."""
    if not isinstance(values, list) or len(values) != 2 or not all(_is_number(v) for v in values):
        raise SpaceError(f"{where}: values must be [low, high] with two numbers")
    low, high = values
    if low > high:
        raise SpaceError(f"{where}: low {low} is greater than high {high}")
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false")
    if step is not None and (not _is_number(step) or step <= 0):
        raise SpaceError(f"{where}: step must be a number > 0")
    if dtype == "int":
        if not all(isinstance(v, int) for v in values):
            raise SpaceError(f"{where}: an int parameter needs integer bounds, got {values}")
        if step is not None and not isinstance(step, int):
            raise SpaceError(f"{where}: an int parameter needs an integer step, got {step}")
        step = step or 1
        if log and step != 1:
            raise SpaceError(f"{where}: log and step cannot be combined (Optuna samples log ints with step 1)")
        if log and low < 1:
            raise SpaceError(f"{where}: log needs low >= 1, got {low}")
        if (high - low) % step:
            raise SpaceError(f"{where}: the range {low}..{high} is not a multiple of step {step}")
        return IntDistribution(low, high, log=log, step=step)
    if log and step is not None:
        raise SpaceError(f"{where}: log and step cannot be combined")
    if log and low <= 0:
        raise SpaceError(f"{where}: log needs low > 0, got {low}")
    if step is not None and not _is_multiple(high - low, step):
        raise SpaceError(f"{where}: the range {low}..{high} is not a multiple of step {step}")
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _is_multiple(span: float, step: float) -> bool:
    """Whether a float span is a whole number of steps (up to rounding)."""
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-8


def canonical_loss(name: str) -> str:
    """'cross-entropy' or 'bpr-max' for any accepted spelling (xe, cross-entropy, bpr-max, bprmax)."""
    loss = LOSS_ALIASES.get(name.strip().lower())
    if loss is None:
        raise SpaceError(f"unknown loss {name!r}; use xe (cross-entropy) or bpr-max")
    return loss


def parse_losses(text: str) -> list[str]:
    """The losses of a comma-separated --losses value, canonical and without repeats."""
    losses = [canonical_loss(p) for p in text.split(",") if p.strip()]
    if not losses:
        raise SpaceError("--losses is empty; use xe, bpr-max or xe,bpr-max")
    return list(dict.fromkeys(losses))


def parse_modes(text: str) -> list[str]:
    """The embedding modes of a comma-separated --modes value, checked and without repeats."""
    modes = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not modes:
        raise SpaceError(f"--modes is empty; use some of {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            raise SpaceError(f"unknown embedding mode {mode!r}; use some of {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def parse_fixed(text: str) -> dict[str, str]:
    """Parse and check a --fixed 'k=v,...' value; study parameters are refused."""
    try:
        fixed = parse_param_string(text)
        Config.from_dict(fixed)
    except ConfigError as e:
        raise SpaceError(f"--fixed: {e}") from None
    for name in fixed:
        if name in STUDY_PARAMS:
            raise SpaceError(f"--fixed: {name} is set by the study; use {STUDY_PARAMS[name]}")
    return fixed


def study_name(loss: str, mode: str) -> str:
    """The name of the study of a loss and embedding mode, e.g. xe_shared or bprmax_none."""
    return f"{LOSS_TOKENS[loss]}_{mode}"


@dataclass(frozen=True)
class StudyPlan:
    """One study: a loss and embedding mode, the parameters it fixes and the space it searches."""

    loss: str
    mode: str
    fixed: dict[str, Any]
    space: Space

    @property
    def name(self) -> str:
        """The study's name, e.g. xe_shared."""
        return study_name(self.loss, self.mode)


def default_params(loss: str, mode: str, epochs: int) -> dict[str, Any]:
    """The published fixed settings of a study: loss, the mode's embedding, epochs, n_sample 2048, logq 1 for xe."""
    return {"loss": loss, **MODES[mode], "n_epochs": epochs, "n_sample": 2048,
            "logq": 1.0 if loss == "cross-entropy" else 0.0}


def plan_study(loss: str, mode: str, epochs: int, space: Space, overrides: Mapping[str, Any]) -> StudyPlan:
    """Combine defaults, space and --fixed: the space overrides defaults, --fixed takes a parameter out of it."""
    searched = {name: dist for name, dist in space.items() if name not in overrides}
    fixed = {k: v for k, v in default_params(loss, mode, epochs).items() if k not in searched}
    fixed.update(overrides)
    try:
        Config.from_dict(fixed)
    except ConfigError as e:
        raise SpaceError(f"study {study_name(loss, mode)}: {e}") from None
    if not searched:
        raise SpaceError(f"study {study_name(loss, mode)}: --fixed leaves no parameter of the space to search")
    return StudyPlan(loss, mode, fixed, searched)
