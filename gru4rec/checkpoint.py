"""Safe files for trained models and training state: safetensors tensors plus JSON metadata, no pickle."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .config import Config
from .files import atomic_path
from .memory import parameter_counts
from .model import GRU4Rec

FORMAT = "gru4rec-model"
STATE_FORMAT = "gru4rec-train-state"


class ModelFileError(ValueError):
    """A model or state file is missing, corrupt, truncated or not one of ours."""


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the safetensors file through a temporary beside `path`, so no half-written file is ever left."""
    try:
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write here ({e.strerror})") from None


def _read(path: Path, expected_format: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != expected_format:
                raise ModelFileError(f"{path}: not a {expected_format} file "
                                     f"(format is {metadata.get('format', 'missing')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ModelFileError:
        raise
    except Exception as e:  # safetensors reports corrupt headers and short files in several ways
        raise ModelFileError(f"{path}: corrupt, truncated or not a {expected_format} file ({e})") from None
    return tensors, metadata


def _item_ids_json(item_ids: pd.Index) -> str:
    values = item_ids.tolist()
    return json.dumps([v.item() if isinstance(v, np.generic) else v for v in values])


def save_model(path: str | os.PathLike, model: GRU4Rec, item_ids: pd.Index) -> None:
    """Save a trained model: its tensors, config and item map (no sample store, no training data)."""
    metadata = {"format": FORMAT, "version": __version__, "config": json.dumps(model.config.to_dict()),
                "item_ids": _item_ids_json(item_ids)}
    _write_atomic(Path(path), dict(model.state_dict()), metadata)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GRU4Rec, pd.Index]:
    """Load a model saved by `save_model`; returns the model (in eval mode) and its item map."""
    tensors, metadata = _read(Path(path), FORMAT)
    try:
        config = Config.from_dict(json.loads(metadata["config"]))
        item_ids = pd.Index(json.loads(metadata["item_ids"]))
        model = GRU4Rec(config, len(item_ids))
        model.load_state_dict(tensors)
    except Exception as e:
        raise ModelFileError(f"{path}: inconsistent model file ({e})") from None
    return model.to(device).eval(), item_ids


def training_state_bytes(config: Config, n_items: int) -> int:
    """The size of a saved training state (float32 parameters, Adagrad accumulators, momenta), within a few KB.

    What a search needs to bound its disk use before any trial has run.
    """
    tables, _, dense = parameter_counts(config, n_items)
    copies = 3 if config.momentum > 0 else 2
    return 4 * copies * (tables + dense) + (16 << 10)  # + two generator states and the file header


def save_training_state(path: str | os.PathLike, state: dict) -> None:
    """Save a `Trainer.state_dict()` so that training can continue exactly where it stopped."""
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    tensors.update({f"optimizer.{k}": v for k, v in state["optimizer"].items()})
    tensors["generator"] = state["generator"]
    if state["store"]["fill_state"] is not None:
        tensors["store.fill_state"] = state["store"]["fill_state"]
    metadata = {"format": STATE_FORMAT, "version": __version__, "epoch": str(state["epoch"]),
                "store.ptr": str(state["store"]["ptr"])}
    _write_atomic(Path(path), tensors, metadata)


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a state saved by `save_training_state`, in the form `Trainer.load_state_dict` takes."""
    tensors, metadata = _read(Path(path), STATE_FORMAT)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return {"model": part("model."), "optimizer": part("optimizer."), "generator": tensors["generator"],
            "store": {"fill_state": tensors.get("store.fill_state"), "ptr": int(metadata["store.ptr"])},
            "epoch": int(metadata["epoch"])}
