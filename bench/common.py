"""Shared pieces of the benchmarks: datasets, environment header, timing and output tables."""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import gru4rec
from gru4rec.data import SessionData, load_session_data
from gru4rec.datasets.synthetic import SyntheticSpec, generate_sessions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
# A flat popularity curve, so that about a million distinct items occur in the training events.
SYNTHETIC_1M = SyntheticSpec(n_events=6_000_000, n_items=1_200_000, zipf_exponent=0.6)


def dataset(name: str) -> SessionData:
    """'rsc15_100k' or 'globo_g1' (train_full from ../shared/data), or 'synthetic_1m' (about 1M items, generated)."""
    if name == "synthetic_1m":
        return SessionData.from_frame(generate_sessions(SYNTHETIC_1M))
    return load_session_data(SHARED / name / "train_full.tsv")


def test_split(name: str, train: SessionData) -> SessionData:
    if name == "synthetic_1m":
        test = dataclasses.replace(SYNTHETIC_1M, n_events=20_000, seed=1)
        return SessionData.from_frame(generate_sessions(test), train.item_ids)
    return load_session_data(SHARED / name / "test.tsv", train.item_ids)


def environment(device: torch.device) -> dict:
    info = {"gru4rec": gru4rec.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:,.0f}" if isinstance(v, float) and v >= 100 else
                                       f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def write_results(name: str, env: dict, rows: list[dict]) -> Path:
    """Print the table and keep a JSON file for comparison over time."""
    print(json.dumps(env))
    print(markdown_table(rows))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{env['device'].replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    print(f"results written to {path}")
    return path


def base_arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--datasets", default="rsc15_100k,globo_g1,synthetic_1m",
                   help="comma-separated: rsc15_100k, globo_g1, synthetic_1m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p
