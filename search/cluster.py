"""The Ray side of a search: joining or starting Ray, and the resources of a trial and the concurrency.

The resolved resources are saved in search.json at `run`, so a `resume` on a cluster that has
scaled up or down in the meantime runs trials of the same size as before.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import ray
import torch
from ray import tune

from gru4rec import Config, SessionData, trial_memory

from .settings import MAX_TRIALS_PER_GPU, SearchError, SearchSettings
from .tune_ext import STUDY_KEY

HEADROOM = 0.15  # of a GPU's memory left out of auto shares: allocator cache, fragmentation, estimate errors
# Memory of one GPU of the types Ray names in its `accelerator_type:<name>` resource, in GiB as the driver
# reports it, rounded down; a name that covers several sizes (A100, V100) takes the smallest.
ACCELERATOR_GIB = {"T4": 14.5, "V100": 15.5, "P100": 15.5, "A10G": 22.0, "L4": 22.0, "L40S": 44.0, "A100": 39.0,
                   "A100-40G": 39.0, "A100-80G": 79.0, "H100": 79.0, "H20": 95.0, "H200": 139.0, "B200": 178.0}


@dataclass(frozen=True)
class GpuMemory:
    """The memory of one GPU of the cluster, and where that figure came from."""

    bytes: int
    source: str


@dataclass(frozen=True)
class StudyShare:
    """A study's GPU share under `--gpus-per-trial auto`: how many trials at its largest config fit one GPU."""

    study: str
    trials_per_gpu: int
    trial_bytes: int
    gpu: GpuMemory

    @property
    def gpus(self) -> float:
        """1 / trials per GPU, rounded down to Ray's resource precision (1e-4) so that they all fit."""
        return math.floor(10_000 / self.trials_per_gpu) / 10_000

    def line(self) -> str:
        return (f"study {self.study}: {self.trials_per_gpu} trials per GPU ({self.gpus:g} GPU each), about "
                f"{self.trial_bytes / 2**30:.1f} GiB per trial at its largest config, of "
                f"{self.gpu.bytes / 2**30:.1f} GiB per GPU ({self.gpu.source})")


@dataclass
class Resources:
    """What one trial (and one retrain) takes, and how many trials run at once."""

    cpus: float
    gpus: float  # a trial's GPU share; with per-study shares the largest, which retrains take
    max_concurrent: int
    study_gpus: dict[str, float] = field(default_factory=dict)  # per-study GPU shares (auto); else `gpus` for all
    shares: list[StudyShare] = field(default_factory=list)  # what auto sized the shares from (at `run` only)

    def bundle(self, study: str | None = None) -> dict[str, float]:
        """The per-trial resource request in Tune's form (of one study's trials, when the shares differ)."""
        gpus = self.study_gpus.get(study, self.gpus)
        return {"cpu": self.cpus, "gpu": gpus} if gpus else {"cpu": self.cpus}

    def trial_bundle(self, config: dict) -> tune.PlacementGroupFactory:
        """The request of one trial from its config (which names its study): `tune.with_resources` takes this."""
        bundle = self.bundle(config.get(STUDY_KEY))
        return tune.PlacementGroupFactory([{"CPU": bundle["cpu"], "GPU": bundle.get("gpu", 0.0)}])

    def describe(self) -> str:
        """'1 CPU / 0.25 GPU each', or with per-study shares the range of GPU shares."""
        shares = sorted(set(self.study_gpus.values()))
        gpus = f"{shares[0]:g}-{shares[-1]:g} GPU by study" if len(shares) > 1 else f"{self.gpus:g} GPU"
        return f"{self.cpus:g} CPU / {gpus} each"

    def share_lines(self) -> list[str]:
        """One line per study with its own GPU share: its trials per GPU and, when just sized, its memory."""
        if self.shares:
            return [share.line() for share in self.shares]
        return [f"study {study}: {gpus:g} GPU per trial (as sized at run)" for study, gpus in self.study_gpus.items()]


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


def gpu_memory(settings: SearchSettings, cluster: dict[str, float]) -> GpuMemory:
    """The memory of one GPU, for auto shares: --gpu-memory if given; else Ray's `accelerator_type:<name>`
    resource if it names a known type (the smallest, on a mixed cluster); else this driver's own GPU 0
    (Ray's resources do not tell a GPU's memory). A one-line error if none of them tells."""
    if settings.gpu_memory:
        return GpuMemory(int(settings.gpu_memory * 2**30), "--gpu-memory")
    types = [key.split(":", 1)[1] for key in cluster if key.startswith("accelerator_type:")]
    known = sorted((ACCELERATOR_GIB[name], name) for name in types if name in ACCELERATOR_GIB)
    if known:
        gib, name = known[0]
        return GpuMemory(int(gib * 2**30), f"accelerator_type:{name}")
    if torch.cuda.is_available():
        return GpuMemory(torch.cuda.get_device_properties(0).total_memory, "GPU 0 of this machine")
    named = f" (accelerator type {', '.join(types)})" if types else ""
    raise SearchError(f"--gpus-per-trial auto: the memory of the cluster's GPUs is unknown{named}; pass "
                      "--gpu-memory GIB, or a share with --gpus-per-trial")


def auto_shares(largest: dict[str, Config], train: SessionData, gpu: GpuMemory) -> list[StudyShare]:
    """Each study's trials per GPU: as many at its largest config as fit the GPU less HEADROOM, at most
    MAX_TRIALS_PER_GPU; a study whose largest trial does not fit one GPU is a SearchError."""
    usable = gpu.bytes * (1 - HEADROOM)
    shares = []
    for study, config in largest.items():
        need = trial_memory(config, train.n_items, train.n_events, train.n_sessions).total
        fit = int(usable // need)
        if fit < 1:
            size = f"layers={'/'.join(map(str, config.layers))}, batch_size={config.batch_size}, " \
                   f"n_sample={config.n_sample}, embedding={config.embedding_mode}"
            anyway = " or give --gpus-per-trial 1 to try anyway" if need < gpu.bytes else ""
            raise SearchError(f"study {study}: a trial at the largest config of its space ({size}) needs about "
                              f"{need / 2**30:.1f} GiB of GPU memory on {train.n_items:,} items, but a GPU has "
                              f"{gpu.bytes / 2**30:.1f} GiB ({gpu.source}), {usable / 2**30:.1f} GiB of it usable "
                              f"with {HEADROOM:.0%} headroom; narrow the space (--space, --fixed){anyway}")
        shares.append(StudyShare(study, min(MAX_TRIALS_PER_GPU, fit), need, gpu))
    return shares


def plan_resources(settings: SearchSettings, cluster: dict[str, float], remote: bool,
                   largest: dict[str, Config] | None = None, train: SessionData | None = None) -> Resources:
    """Resolve per-trial CPUs/GPUs and the concurrency from the settings and the cluster's resources.

    GPU shares: --gpus-per-trial SHARE for every trial; auto (the default) sizes each study's share with the
    GPUs' memory from the memory model at the study's `largest` config on the `train` data (none without
    GPUs); shares resolved at `run` are saved (`study_gpus`) and reused as they are.
    """
    n_gpus, n_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 1.0)
    shares: list[StudyShare] = []
    if settings.study_gpus:
        study_gpus = dict(settings.study_gpus)
    elif settings.gpus_per_trial is None and n_gpus > 0:
        shares = auto_shares(largest or {}, train, gpu_memory(settings, cluster))
        study_gpus = {share.study: share.gpus for share in shares}
    else:
        study_gpus = {}
    gpus = max(study_gpus.values()) if study_gpus else settings.gpus_per_trial or 0.0
    if gpus > 0 and n_gpus == 0 and not remote:
        raise SearchError(f"--gpus-per-trial {gpus:g}: this Ray instance has no GPU; use --gpus-per-trial 0")
    if settings.cpus_per_trial > n_cpus and not remote:
        raise SearchError(f"--cpus-per-trial {settings.cpus_per_trial}: this Ray instance has {n_cpus:g} CPUs")
    concurrent = settings.max_concurrent
    if remote and (settings.gpus_per_trial is None or concurrent is None):
        print(f"note: trial resources are sized from the cluster as it is now ({n_cpus:g} CPUs, {n_gpus:g} GPUs); "
              "on an autoscaling cluster pass --gpus-per-trial and --max-concurrent", file=sys.stderr)
    if concurrent is None:  # with per-study shares, the GPUs split evenly among the studies' trials
        mean_gpus = sum(study_gpus.values()) / len(study_gpus) if study_gpus else gpus
        fits = [n_cpus / settings.cpus_per_trial] + ([n_gpus / mean_gpus] if gpus and n_gpus else [])
        concurrent = max(1, math.floor(min(fits)))
    return Resources(cpus=settings.cpus_per_trial, gpus=gpus, max_concurrent=concurrent, study_gpus=study_gpus,
                     shares=shares)
