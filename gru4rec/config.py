"""Hyperparameters of GRU4Rec: the config dataclass, parameter strings and parameter files."""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

LOSSES = ("cross-entropy", "bpr-max")
LOSS_ALIASES = {"xe": "cross-entropy", "cross-entropy": "cross-entropy", "bpr-max": "bpr-max", "bprmax": "bpr-max"}


class ConfigError(ValueError):
    """A hyperparameter has an unknown name or a value that cannot be used."""


@dataclass
class Config:
    """Every hyperparameter of GRU4Rec with the official defaults."""

    layers: list[int] = field(default_factory=lambda: [100])
    loss: str = "cross-entropy"
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    sample_alpha: float = 0.5
    n_sample: int = 2048
    embedding: int = 0
    constrained_embedding: bool = True
    n_epochs: int = 10
    bpreg: float = 1.0
    elu_param: float = 0.5
    logq: float = 0.0
    seed: int = 42

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first parameter whose value is out of range."""
        if self.loss not in LOSSES:
            raise ConfigError(f"loss={self.loss!r}: allowed values are {', '.join(LOSSES)} (or xe, bprmax)")
        if not self.layers or any(n < 1 for n in self.layers):
            raise ConfigError(f"layers={self.layers}: need one or more positive sizes, e.g. 100 or 100/100")
        checks = [
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("n_sample", self.n_sample >= 0, "an integer >= 0"),
            ("n_epochs", self.n_epochs >= 0, "an integer >= 0"),
            ("embedding", self.embedding >= 0, "an integer >= 0 or 'layersize'"),
            ("learning_rate", self.learning_rate > 0, "a number > 0"),
            ("momentum", 0 <= self.momentum < 1, "a number in [0, 1)"),
            ("dropout_p_embed", 0 <= self.dropout_p_embed < 1, "a number in [0, 1)"),
            ("dropout_p_hidden", 0 <= self.dropout_p_hidden < 1, "a number in [0, 1)"),
            ("sample_alpha", 0 <= self.sample_alpha <= 1, "a number in [0, 1]"),
            ("elu_param", self.elu_param >= 0, "a number >= 0"),
            ("bpreg", self.bpreg >= 0, "a number >= 0"),
            ("logq", self.logq >= 0, "a number >= 0"),
        ]
        for name, ok, allowed in checks:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name}={value!r}: must be a finite number")
            if not ok:
                raise ConfigError(f"{name}={value!r}: must be {allowed}")

    @property
    def embedding_mode(self) -> str:
        """'shared', 'separate' or 'none' (a constrained embedding takes precedence)."""
        if self.constrained_embedding:
            return "shared"
        return "separate" if self.embedding else "none"

    @classmethod
    def from_dict(cls, params: Mapping[str, Any], base: "Config | None" = None) -> "Config":
        """Build a config from raw values (strings or typed), on top of `base` or the defaults."""
        values = dataclasses.asdict(base) if base is not None else {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        items = dict(params)
        for key in items:
            if key not in known:
                raise ConfigError(f"unknown parameter {key!r}; known parameters: {', '.join(known)}")
        embedding = items.pop("embedding", values.get("embedding", 0))
        for key, raw in items.items():
            values[key] = _convert(key, raw, known[key].type)
        layers = values.get("layers", [100])
        values["embedding"] = _convert_embedding(embedding, layers)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain values, in declaration order."""
        return dataclasses.asdict(self)


def _convert(key: str, raw: Any, type_name: str) -> Any:
    try:
        if type_name == "list[int]":
            return _parse_layers(raw)
        if type_name == "bool":
            return _parse_bool(raw)
        if type_name == "int":
            return _integer(raw)
        if type_name == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if key == "loss":
            return LOSS_ALIASES.get(str(raw), str(raw))
        return raw
    except (TypeError, ValueError, OverflowError):
        expected = {"list[int]": "sizes separated by '/' such as 100/100", "bool": "True/False or 1/0",
                    "int": "an integer", "float": "a number"}[type_name]
        raise ConfigError(f"{key}={raw!r}: expected {expected}") from None


def _integer(raw: Any) -> int:
    """An integer from an int, an integral float or its text; ValueError/OverflowError otherwise (8.9, inf)."""
    value = float(raw) if isinstance(raw, str) else raw
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError
    return int(value)


def _parse_layers(raw: Any) -> list[int]:
    if isinstance(raw, str):
        return [_integer(p) for p in raw.replace(",", "/").split("/") if p.strip()]
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [_integer(raw)]
    return [_integer(v) for v in raw]


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "1.0"):
        return True
    if text in ("false", "0", "0.0"):
        return False
    raise ValueError


def _convert_embedding(raw: Any, layers: list[int]) -> int:
    if isinstance(raw, str) and raw.strip().lower() == "layersize":
        return layers[0]
    return _convert("embedding", raw, "int")


def parse_param_string(text: str) -> dict[str, str]:
    """Split 'k1=v1,k2=v2' into a dict of raw strings (lists use '/')."""
    params: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"parameter string item {part!r} is not of the form name=value")
        if key.strip() in params:
            raise ConfigError(f"parameter {key.strip()!r} is given twice in the parameter string")
        params[key.strip()] = value.strip()
    return params


def read_param_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read an official-format (`gru4rec_params = OrderedDict([...])`) or JSON parameter file.

    The Python form is parsed as a literal and never executed: any other statement is rejected.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read parameter file ({e.strerror})") from None
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            params = json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(path, pairs))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: a JSON parameter file must hold one object")
        return params
    return _parse_python_param_file(path, text)


def _parse_python_param_file(path: Path, text: str) -> dict[str, Any]:
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: not a valid parameter file ({e.msg})") from None
    params = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "collections" and \
                all(a.name == "OrderedDict" for a in node.names):
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and node.targets[0].id == "gru4rec_params" and \
                params is None:
            params = _literal_params(path, node.value)
            continue
        raise ConfigError(f"{path}: line {node.lineno}: only 'from collections import OrderedDict' and "
                          "'gru4rec_params = OrderedDict([...])' are allowed in a parameter file")
    if params is None:
        raise ConfigError(f"{path}: no 'gru4rec_params = OrderedDict([...])' found")
    return params


def _literal_params(path: Path, node: ast.expr) -> dict[str, Any]:
    is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id in ("OrderedDict", "dict") and not node.keywords and len(node.args) <= 1
    try:
        if is_call:
            pairs = ast.literal_eval(node.args[0]) if node.args else []
            return _unique_pairs(path, [(str(k), v) for k, v in pairs], node.lineno)
        if isinstance(node, ast.Dict):
            keys = [ast.literal_eval(k) for k in node.keys]
            return _unique_pairs(path, list(zip(map(str, keys), map(ast.literal_eval, node.values))), node.lineno)
    except ConfigError:
        raise
    except (ValueError, TypeError, SyntaxError):
        pass
    raise ConfigError(f"{path}: line {node.lineno}: gru4rec_params must be OrderedDict([(name, value), ...]) "
                      "built from literals only")


def _unique_pairs(path: Path, pairs: list[tuple[str, Any]], line: int | None = None) -> OrderedDict:
    """The (name, value) pairs as a dict; a name given twice is an error (the last one would win silently)."""
    params: OrderedDict = OrderedDict()
    for key, value in pairs:
        if key in params:
            where = f"{path}: line {line}" if line else str(path)
            raise ConfigError(f"{where}: parameter {key!r} is given twice")
        params[key] = value
    return params


def format_param_file(config: Config) -> str:
    """The official paramfile text for `config` (readable by this package and the official run.py)."""
    values = config.to_dict()
    values.pop("seed")
    lines = [f"    ({k!r}, {v!r})," for k, v in values.items()]
    return "from collections import OrderedDict\ngru4rec_params = OrderedDict([\n" + "\n".join(lines) + "\n])\n"
