"""GRU4Rec in PyTorch: session-parallel training, sampled losses, next-item evaluation.

The public names load their module on first use, so that a program using only the torch-free parts (the config,
the data reader, file helpers) does not import torch.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_MODULE_OF = {
    "Config": "config", "ConfigError": "config", "format_param_file": "config", "parse_param_string": "config",
    "read_param_file": "config",
    "DataError": "data", "SessionData": "data", "load_session_data": "data", "read_events": "data",
    "EvalResult": "evaluate", "evaluate": "evaluate",
    "MemoryEstimate": "memory", "trial_memory": "memory",
    "GRU4Rec": "model",
    "EpochInfo": "train", "Trainer": "train", "TrainingError": "train", "free_memory": "train",
}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from .config import Config, ConfigError, format_param_file, parse_param_string, read_param_file
    from .data import DataError, SessionData, load_session_data, read_events
    from .evaluate import EvalResult, evaluate
    from .memory import MemoryEstimate, trial_memory
    from .model import GRU4Rec
    from .train import EpochInfo, Trainer, TrainingError, free_memory


class _Package(types.ModuleType):
    """`evaluate` is both a submodule and the public function: importing the submodule binds the module to the
    package's attribute, which must keep giving the function (as `from .evaluate import evaluate` did here)."""

    @property
    def evaluate(self) -> Any:
        return importlib.import_module(".evaluate", __name__).evaluate

    @evaluate.setter
    def evaluate(self, module: types.ModuleType) -> None:
        pass  # the import system's binding of the submodule


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])
