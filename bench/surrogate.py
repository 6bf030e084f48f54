"""A surrogate of GRU4Rec training for search benchmarks, from learning curves recorded with the real trainer.

A config's curve (validation MRR@20 and seconds after each epoch) is the inverse-distance-weighted blend of
the curves of its k nearest recorded configs, in a parameter space where every numeric parameter is
scaled to [0, 1] over its range (log-scaled on log ranges) and a differing categorical value counts as a
distance of 1. A recorded config gets its own curve exactly. A diverged recorded curve is 0 from the
epoch it diverged on, so configs near unstable ones are scored down, as they would be in a real search.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from optuna.distributions import CategoricalDistribution


class Surrogate:
    """Curves of one recorded pool (a dataset x study), answering for any config of the study's space."""

    def __init__(self, curves: pd.DataFrame, space: dict, k: int = 3, power: float = 2.0):
        self.space, self.k, self.power = space, k, power
        self.epochs = int(curves["epoch"].max())
        configs = []
        mrr, seconds, diverged = [], [], []
        for _, group in curves.sort_values(["config_id", "epoch"]).groupby("config_id"):
            configs.append(json.loads(group["params"].iloc[0]))
            m, s = np.zeros(self.epochs), np.zeros(self.epochs)
            rows = group.to_dict("records")
            for r in rows:
                m[r["epoch"] - 1] = 0.0 if r["diverged"] else r["mrr"]
                s[r["epoch"] - 1] = r["train_s"] + r["eval_s"]
            last = rows[-1]
            diverged.append(int(last["epoch"]) if last["diverged"] else 0)
            if last["diverged"]:  # nothing is trained after the epoch that diverged
                s[last["epoch"]:] = 0.0
            mrr.append(m)
            seconds.append(s)
        self.configs = configs
        self.mrr, self.seconds = np.array(mrr), np.array(seconds)
        self.diverged_at = np.array(diverged)
        self.points = np.array([self.embed(c) for c in configs])

    def embed(self, params: dict[str, Any]) -> np.ndarray:
        """A config as a point: numeric parameters in [0, 1], categorical ones one-hot (scaled so a
        different category is at distance 1)."""
        out = []
        for name, dist in self.space.items():
            value = params[name]
            if isinstance(dist, CategoricalDistribution):
                out += [(1.0 if value == c else 0.0) / math.sqrt(2) for c in dist.choices]
            elif dist.log:
                out.append((math.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low)))
            else:
                out.append((value - dist.low) / (dist.high - dist.low) if dist.high > dist.low else 0.0)
        return np.array(out)

    def curve(self, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
        """(MRR@20 per epoch, seconds per epoch, epoch it diverges on or 0) of a config."""
        distance = np.linalg.norm(self.points - self.embed(params), axis=1)
        nearest = np.argsort(distance, kind="stable")[:self.k]
        if distance[nearest[0]] < 1e-9:
            i = nearest[0]
            return self.mrr[i].copy(), self.seconds[i].copy(), int(self.diverged_at[i])
        weights = 1.0 / distance[nearest] ** self.power
        weights /= weights.sum()
        mrr = weights @ self.mrr[nearest]
        seconds = weights @ self.seconds[nearest]
        # A blend diverges where the nearest recorded config did (its curve is 0 from there).
        diverged = int(self.diverged_at[nearest[0]])
        if diverged:
            mrr[diverged - 1:] = 0.0
            seconds[diverged:] = 0.0
        return mrr, seconds, diverged

    def final(self, params: dict[str, Any]) -> float:
        """The MRR@20 a config ends with after every epoch (0 if it diverges)."""
        mrr, _, diverged = self.curve(params)
        return 0.0 if diverged else float(mrr[-1])

    @property
    def recorded_finals(self) -> np.ndarray:
        """The final MRR@20 of every recorded config (0 for those that diverged)."""
        return np.where(self.diverged_at == 0, self.mrr[:, -1], 0.0)

    @property
    def best_final(self) -> float:
        """The best final MRR@20 of the recorded pool: what a perfect search finds."""
        return float(self.recorded_finals.max())

    @property
    def mean_epoch_seconds(self) -> float:
        return float(self.seconds[self.seconds > 0].mean())
