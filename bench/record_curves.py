"""Record real learning curves for the search benchmark: configs sampled over the published spaces, 10 epochs each.

Every config is trained with the real trainer on train_tr and evaluated on train_valid (MRR@20 and
Recall@20, standard ties, as a trial does) after every epoch; the epoch's training and evaluation
seconds are kept as the worker's CPU seconds (one thread per worker), so that other work on the machine,
or pausing the recording, does not inflate them. A pool is a dataset x study: random configs drawn
uniformly from the study's space, plus the published best configs of spaces/best/ and the defaults that
fit it. Rows are appended to one Parquet file after each config, so the recording can be stopped and
started again at any time:

    .venv/bin/python bench/record_curves.py                      # the full recording (many CPU hours)
    .venv/bin/python bench/record_curves.py --workers 2          # two configs at a time, one thread each
    .venv/bin/python bench/record_curves.py --pools rsc15_100k:xe_shared:8 --epochs 3 --out /tmp/c.parquet
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
# bench/search.py would shadow the platform's package: import the package first, then the bench's modules.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from search.spaces import SPACES_DIR, Space, default_params, load_space  # noqa: E402

sys.path.append(str(HERE))
from common import SHARED  # noqa: E402

CURVES = HERE / "data" / "curves.parquet"
DEFAULT_POOLS = "rsc15_100k:xe_shared:100,rsc15_100k:bprmax_shared:100,globo_g1:xe_shared:44"
LOSSES = {"xe": "cross-entropy", "bprmax": "bpr-max"}


@dataclass(frozen=True)
class Job:
    """One config of one pool to train."""

    dataset: str
    study: str
    config_id: int
    origin: str
    params: dict[str, Any]
    epochs: int


def study_loss_mode(study: str) -> tuple[str, str]:
    token, mode = study.split("_")
    return LOSSES[token], mode


def study_space(study: str) -> Space:
    loss, _ = study_loss_mode(study)
    return load_space(SPACES_DIR / ("xe.jsonl" if loss == "cross-entropy" else "bpr-max.jsonl"))


def sample_uniform(space: Space, rng: np.random.Generator) -> dict[str, Any]:
    """One config drawn uniformly from the space's grid (stepped ranges), log-uniformly on log ranges."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    params: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = dist.choices[rng.integers(len(dist.choices))]
        elif dist.log:
            value = float(np.exp(rng.uniform(np.log(dist.low), np.log(dist.high))))
            params[name] = int(round(value)) if isinstance(dist, IntDistribution) else value
        else:
            step = dist.step or (1 if isinstance(dist, IntDistribution) else None)
            if step is None:
                params[name] = float(rng.uniform(dist.low, dist.high))
            else:
                k = int(rng.integers(int(round((dist.high - dist.low) / step)) + 1))
                value = dist.low + k * step
                params[name] = int(value) if isinstance(dist, IntDistribution) else round(float(value), 10)
    return params


def known_configs(study: str, space: Space) -> list[tuple[str, dict[str, Any]]]:
    """The published best configs of the study's loss (spaces/best/) and the defaults, restricted to the space."""
    from gru4rec import Config, read_param_file
    loss, _ = study_loss_mode(study)
    token = study.split("_")[0]
    found = [("default", Config(loss=loss).to_dict())]
    for path in sorted((SPACES_DIR / "best").glob(f"*_{token}_shared_best.py")):
        found.append((f"published:{path.name.split('_')[0]}", Config.from_dict(read_param_file(path)).to_dict()))
    out = []
    for origin, config in found:
        params = {name: (config[name][0] if name == "layers" else config[name]) for name in space}
        out.append((origin, params))
    return out


def plan_jobs(pools: str, epochs: int) -> list[Job]:
    """The configs of every pool, pool after pool in the order given: the known configs first, then random ones."""
    per_pool = []
    for spec in pools.split(","):
        dataset, study, count = spec.split(":")
        space = study_space(study)
        rng = np.random.default_rng([hash_text(dataset), hash_text(study)])
        configs = known_configs(study, space) + [("random", sample_uniform(space, rng)) for _ in range(int(count))]
        per_pool.append([Job(dataset, study, i, origin, params, epochs) for i, (origin, params) in enumerate(configs)])
    return [job for group in per_pool for job in group]


def hash_text(text: str) -> int:
    """A stable 32-bit hash (Python's hash() is salted per process)."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value


_DATA: dict[str, tuple] = {}


def _data(dataset: str):
    from gru4rec import load_session_data
    if dataset not in _DATA:
        train = load_session_data(SHARED / dataset / "train_tr.tsv")
        _DATA[dataset] = (train, load_session_data(SHARED / dataset / "train_valid.tsv", train.item_ids))
    return _DATA[dataset]


def train_job(job: Job, threads: int) -> list[dict[str, Any]]:
    """Train one config epoch by epoch; one row per epoch (a diverged epoch scores 0 and ends the curve)."""
    import torch
    from gru4rec import Config, Trainer, TrainingError, evaluate
    torch.set_num_threads(threads)
    train, valid = _data(job.dataset)
    loss, mode = study_loss_mode(job.study)
    config = Config.from_dict({**default_params(loss, mode, job.epochs), **job.params})
    trainer = Trainer(config, train, device="cpu")
    rows = []
    base = {"dataset": job.dataset, "study": job.study, "config_id": job.config_id, "origin": job.origin,
            "params": json.dumps(job.params, sort_keys=True)}
    for epoch in range(1, job.epochs + 1):
        start = time.process_time()
        try:
            info = trainer.train_epoch()
        except TrainingError:
            rows.append({**base, "epoch": epoch, "mrr": 0.0, "recall": 0.0, "loss": float("nan"),
                         "train_s": time.process_time() - start, "eval_s": 0.0, "diverged": True})
            break
        train_s = time.process_time() - start
        metrics = evaluate(trainer.model, valid, cutoffs=(20,), mode="standard")
        rows.append({**base, "epoch": epoch, "mrr": metrics.mrr[20], "recall": metrics.recall[20], "loss": info.loss,
                     "train_s": train_s, "eval_s": time.process_time() - start - train_s, "diverged": False})
    return rows


def load_curves(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def append(path: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Add one config's rows to the file (rewritten through a temporary, so a kill never corrupts it)."""
    table = pd.concat([load_curves(path), pd.DataFrame(rows)], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False, compression="zstd")
    os.replace(tmp, path)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pools", default=DEFAULT_POOLS, help=f"DATASET:STUDY:N_RANDOM,... (default: {DEFAULT_POOLS})")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=CURVES)
    p.add_argument("--workers", type=int, default=1, help="configs trained at once (default: 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default: 1; the recorded seconds are CPU seconds of all of them)")
    args = p.parse_args()
    done = load_curves(args.out)
    seen = set() if done.empty else set(zip(done["dataset"], done["study"], done["config_id"]))
    jobs = [j for j in plan_jobs(args.pools, args.epochs) if (j.dataset, j.study, j.config_id) not in seen]
    print(f"{len(seen)} configs recorded in {args.out}, {len(jobs)} to go", flush=True)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        queue = iter(jobs)
        running = {}
        for job in queue:
            running[pool.submit(train_job, job, args.threads)] = job
            if len(running) >= args.workers:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                rows = future.result()
                append(args.out, rows)
                last = rows[-1]
                print(f"{job.dataset} {job.study} #{job.config_id} ({job.origin}): {len(rows)} epochs, "
                      f"final MRR@20 {last['mrr']:.4f}, {sum(r['train_s'] + r['eval_s'] for r in rows):.0f} s "
                      f"[{time.perf_counter() - start:.0f} s elapsed]", flush=True)
                nxt = next(queue, None)
                if nxt is not None:
                    running[pool.submit(train_job, nxt, args.threads)] = nxt


if __name__ == "__main__":
    main()
