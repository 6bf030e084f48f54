"""Warm starts: configs a new study evaluates first, before TPE proposes its own.

- `best`: the published best configs of the study's loss (spaces/best/) and the defaults;
- an earlier search (its folder, or its name under the same storage): the top configs of the study of
  the same name there.
Each config is mapped onto the study's space: its values of the searched parameters, snapped to the
space's grid and bounds (the defaults' 100 units become 96 on a 64..512 step-32 grid, say).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from gru4rec import Config, read_param_file

from .ledger import Outcome
from .settings import SETTINGS_FILE, SearchError, SearchSettings, Store, resolve_storage
from .spaces import LOSS_TOKENS, SPACES_DIR, Space, StudyPlan
from .progress import read_ledger

TOP_OF_EARLIER_SEARCH = 5


def snap(value: Any, dist: Any) -> Any | None:
    """`value` as a value of the distribution: on its grid and within its bounds; None if it has no place."""
    if isinstance(dist, CategoricalDistribution):
        matches = [c for c in dist.choices if c == value]
        return matches[0] if matches else None
    if isinstance(value, list):  # layers of a paramfile
        value = value[0]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    value = min(max(value, dist.low), dist.high)
    if dist.step:
        value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(value, dist.high)
    if isinstance(dist, IntDistribution):
        return int(round(value))
    return round(float(value), 10) if isinstance(dist, FloatDistribution) else value


def fit_to_space(params: dict[str, Any], space: Space) -> dict[str, Any] | None:
    """The config's values of the searched parameters, snapped onto the space; None if one has no place."""
    fitted = {}
    for name, dist in space.items():
        if name not in params or (value := snap(params[name], dist)) is None:
            return None
        fitted[name] = value
    return fitted


def published(plan: StudyPlan) -> list[dict[str, Any]]:
    """The published best configs of the study's loss, then the defaults (with the study's loss)."""
    token = LOSS_TOKENS[plan.loss]
    configs = [Config.from_dict(read_param_file(path)).to_dict()
               for path in sorted((SPACES_DIR / "best").glob(f"*_{token}_shared_best.py"))]
    return configs + [Config(loss=plan.loss).to_dict()]


def from_search(source: str, storage: str, plan: StudyPlan) -> list[dict[str, Any]]:
    """The top configs of the same study in an earlier search (by final MRR@20 of complete trials)."""
    folder = Path(source) if Path(source).is_dir() or "/" in source else None
    uri = str(folder.resolve()) if folder else f"{resolve_storage(storage)}/{source}"
    store = Store(uri)
    text = store.read_text(SETTINGS_FILE)
    if text is None:
        raise SearchError(f"--warm-start {source}: no search there ({uri}/{SETTINGS_FILE} not found)")
    earlier = SearchSettings.from_json(text, store.path(SETTINGS_FILE))
    earlier.name, earlier.storage = Path(uri).name, str(Path(uri).parent) if "://" not in uri else uri.rsplit("/", 1)[0]
    matching = [p for p in earlier.plans() if p.name == plan.name]
    records = (read_ledger(earlier, matching[0]) or []) if matching else []
    complete = sorted((r for r in records if r.outcome == Outcome.COMPLETE and r.final_mrr is not None),
                      key=lambda r: r.final_mrr, reverse=True)
    return [r.params for r in complete[:TOP_OF_EARLIER_SEARCH]]


def warm_configs(sources: list[str], storage: str, plan: StudyPlan) -> list[dict[str, Any]]:
    """The configs, fitted to the study's space and without repeats, that the study evaluates first."""
    found, seen = [], set()
    for source in sources:
        candidates = published(plan) if source == "best" else from_search(source, storage, plan)
        for params in candidates:
            fitted = fit_to_space(params, plan.space)
            key = tuple(sorted(fitted.items())) if fitted else None
            if fitted is not None and key not in seen:
                seen.add(key)
                found.append(fitted)
    return found
