"""GRU4Rec in PyTorch: session-parallel training, sampled losses, next-item evaluation."""
__version__ = "0.1.0"

from .config import Config, ConfigError, format_param_file, parse_param_string, read_param_file
from .data import DataError, SessionData, load_session_data, read_events
from .evaluate import EvalResult, evaluate
from .memory import MemoryEstimate, trial_memory
from .model import GRU4Rec
from .train import EpochInfo, Trainer, TrainingError, free_memory

__all__ = ["Config", "ConfigError", "DataError", "EpochInfo", "EvalResult", "GRU4Rec", "MemoryEstimate", "SessionData",
           "Trainer", "TrainingError", "evaluate", "format_param_file", "free_memory", "load_session_data",
           "parse_param_string", "read_events", "read_param_file", "trial_memory"]
