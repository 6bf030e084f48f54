"""The official GRU4Rec (a checkout the user points to) and `gru4rec run`, alternately on the same data.

Both are run as the command-line programs users run (`python run.py` and `gru4rec run`), with the same
parameter string, training file and test file, one after the other, so that the machine's state is the
same for both. Their printed epoch lines give events/s; the evaluation line gives seconds (the number
of predictions is the same for both and printed by ours); the result lines give Recall and MRR.
"""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EPOCH_LINE = re.compile(r"^Epoch(\d+) --> loss: \S+\s+\(([\d.]+)s\)\s+\[([\d.]+) mb/s \| (\d+) e/s\]", re.M)
EVAL_LINE = re.compile(r"^Evaluation took ([\d.]+)s(?: \((\d+) predictions\))?", re.M)
RESULT_LINE = re.compile(r"^Recall@(\d+): ([\d.]+) MRR@\d+: ([\d.]+)", re.M)


@dataclass
class Run:
    """What one run printed: events/s per epoch, evaluation seconds and predictions, Recall/MRR@20."""

    events_per_s: list[float]
    eval_seconds: float | None
    predictions: int | None
    recall: float | None
    mrr: float | None


@dataclass
class Comparison:
    """The runs of both implementations for one setting, in the order they ran."""

    setting: str
    official: list[Run] = field(default_factory=list)
    ours: list[Run] = field(default_factory=list)

    def row(self) -> dict:
        """Medians over epochs and repeats, and the ratios ours / official."""
        def med(runs: list[Run], key) -> float | None:
            values = [v for r in runs for v in key(r) if v is not None]
            return statistics.median(values) if values else None
        predictions = next((r.predictions for r in self.ours if r.predictions), None)
        off_eps, our_eps = med(self.official, lambda r: r.events_per_s), med(self.ours, lambda r: r.events_per_s)
        off_eval, our_eval = med(self.official, lambda r: [r.eval_seconds]), med(self.ours, lambda r: [r.eval_seconds])
        row = {"setting": self.setting, "official e/s": off_eps, "ours e/s": our_eps,
               "train ratio": our_eps / off_eps if off_eps and our_eps else None}
        if predictions and off_eval and our_eval:
            row.update({"official pred/s": predictions / off_eval, "ours pred/s": predictions / our_eval,
                        "eval ratio": off_eval / our_eval})
        for name, runs in (("official", self.official), ("ours", self.ours)):
            row[f"{name} R@20"] = med(runs, lambda r: [r.recall])
            row[f"{name} MRR@20"] = med(runs, lambda r: [r.mrr])
        return row


def parse(output: str, cutoff: int = 20) -> Run:
    """The figures of one run's output."""
    epochs = [float(m.group(4)) for m in EPOCH_LINE.finditer(output)]
    evaluation = EVAL_LINE.search(output)
    results = {int(k): (float(r), float(m)) for k, r, m in RESULT_LINE.findall(output)}
    recall, mrr = results.get(cutoff, (None, None))
    return Run(epochs, float(evaluation.group(1)) if evaluation else None,
               int(evaluation.group(2)) if evaluation and evaluation.group(2) else None, recall, mrr)


def check_checkout(path: Path) -> Path:
    """The official run.py in `path`, or a clear error."""
    run_py = path / "run.py"
    if not run_py.is_file() or not (path / "gru4rec_pytorch.py").is_file():
        raise SystemExit(f"--against-official {path}: not a checkout of the official GRU4Rec_PyTorch_Official "
                         "(run.py and gru4rec_pytorch.py expected)")
    return run_py


def int32_sessions(train: Path, test: Path | None, directory: Path) -> tuple[Path, Path | None]:
    """The files as given when their session ids fit in int32 (the official run.py reads them as int32),
    else copies in `directory` with the ids renumbered in order of first appearance, for both programs."""
    frames = {path: pd.read_csv(path, sep="\t", dtype={"ItemId": str}) for path in (train, test) if path}
    if all(f["SessionId"].max() <= np.iinfo(np.int32).max for f in frames.values()):
        return train, test
    codes = pd.concat([f["SessionId"] for f in frames.values()]).drop_duplicates().reset_index(drop=True)
    renumber = pd.Series(np.arange(len(codes), dtype=np.int64), index=codes.values)
    out = []
    for path, frame in frames.items():
        frame["SessionId"] = renumber.loc[frame["SessionId"].values].values
        target = directory / path.name
        frame.to_csv(target, sep="\t", index=False)
        out.append(target)
    return out[0], (out[1] if test else None)


def run_command(command: list[str], timeout: float) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def compare(official: Path, setting: str, params: str, train: Path, test: Path | None, repeats: int,
            timeout: float = 3600) -> Comparison:
    """Run the official code and ours `repeats` times each, alternating, and collect what they printed."""
    run_py = check_checkout(official)
    ours = shutil.which("gru4rec", path=str(Path(sys.executable).parent)) or "gru4rec"
    tail = ["-t", str(test)] if test else []
    result = Comparison(setting)
    for _ in range(repeats):
        out = run_command([sys.executable, str(run_py), str(train), "-ps", params, "-d", "cpu", *tail], timeout)
        result.official.append(parse(out))
        out = run_command([ours, "run", str(train), "-ps", params, "-d", "cpu", *tail], timeout)
        result.ours.append(parse(out))
        print(f"  {setting}: official {result.official[-1].events_per_s} e/s, ours {result.ours[-1].events_per_s} e/s",
              flush=True)
    return result
