"""The Ray side of a search: joining or starting Ray, and the resources of a trial and the concurrency.

The resolved resources are saved in search.json at `run`, so a `resume` on a cluster that has
scaled up or down in the meantime runs trials of the same size as before.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import ray

from .settings import SearchError, SearchSettings


@dataclass
class Resources:
    """What one trial (and one retrain) takes, and how many trials run at once."""

    cpus: float
    gpus: float
    max_concurrent: int

    def bundle(self) -> dict[str, float]:
        """The per-trial resource request in Tune's form."""
        return {"cpu": self.cpus, "gpu": self.gpus} if self.gpus else {"cpu": self.cpus}


def connect_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = True,
                quiet: bool = False) -> str | None:
    """Join a cluster (--address or RAY_ADDRESS, e.g. inside `ray job submit`) or start a local Ray.

    Returns the dashboard URL when there is one. `quiet` keeps the workers' log lines out of the driver's output
    (they stay in Ray's log files and the dashboard).
    """
    if ray.is_initialized():
        return None
    try:
        if address or os.environ.get("RAY_ADDRESS"):
            context = ray.init(address=address, log_to_driver=not quiet)
        else:
            context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=not quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SearchError(f"cannot start or join Ray at {address or 'a local instance'}: "
                          f"{str(e).splitlines()[0]}") from None
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url else None


def plan_resources(settings: SearchSettings, cluster: dict[str, float], remote: bool) -> Resources:
    """Resolve per-trial CPUs/GPUs and the concurrency from the settings and the cluster's resources.

    At `run` the result is written back into the settings, so that `resume` reuses it unchanged.
    """
    n_gpus, n_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    gpus = settings.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if n_gpus > 0 else 0.0
    if gpus > 0 and n_gpus == 0 and not remote:
        raise SearchError(f"--gpus-per-trial {gpus}: this Ray instance has no GPU; use --gpus-per-trial 0")
    if settings.cpus_per_trial > n_cpus and not remote:
        raise SearchError(f"--cpus-per-trial {settings.cpus_per_trial}: this Ray instance has {n_cpus:g} CPUs")
    concurrent = settings.max_concurrent
    if remote and (settings.gpus_per_trial is None or concurrent is None):
        print(f"note: trial resources are sized from the cluster as it is now ({n_cpus:g} CPUs, {n_gpus:g} GPUs); "
              "on an autoscaling cluster pass --gpus-per-trial and --max-concurrent", file=sys.stderr)
    if concurrent is None:
        fits = [n_cpus / settings.cpus_per_trial] + ([n_gpus / gpus] if gpus and n_gpus else [])
        concurrent = max(1, math.floor(min(fits)))
    return Resources(cpus=settings.cpus_per_trial, gpus=gpus, max_concurrent=concurrent)
