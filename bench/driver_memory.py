"""What the search driver holds per trial, measured on the objects alone: Tune's `Trial` with ten epochs of results
(for the numbers a trial reports to Tune now, and for a fuller report that also carries recall, loss, timings and
the divergence flag), and Optuna's journal storage with the trial's parameters and intermediate values.

    .venv/bin/python bench/driver_memory.py [--trials 200]

Memory is what tracemalloc traces per trial (Python allocations, not the process's RSS); the JSON is Tune's saved
state of the trial, which every snapshot writes.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import tracemalloc
from typing import Callable

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from ray.tune.experiment import Trial

METRIC, RECALL, EPOCH = "mrr@20", "recall@20", "epoch"  # as search/ledger.py and search/tune_ext.py name them

CONFIG = {"study": "xe_shared", "layers": 128, "batch_size": 64, "learning_rate": 0.05, "dropout_p_embed": 0.1,
          "dropout_p_hidden": 0.2, "momentum": 0.3, "sample_alpha": 0.5}
FULLER = {RECALL: 0.5, "loss": 4.2, "epoch_seconds": 60.0, "events_per_s": 9000.0, "diverged": 0}
SPACE = {"layers": IntDistribution(32, 512, step=32), "batch_size": IntDistribution(32, 256, step=16),
         **{name: FloatDistribution(0, 1, step=0.05) for name in
            ("learning_rate", "dropout_p_embed", "dropout_p_hidden", "momentum", "sample_alpha")}}


def tune_result(epoch: int, extra: dict) -> dict:
    """One epoch's result as Tune holds it: what the trial reports, and what Tune adds."""
    return {METRIC: 0.3 + epoch / 1000, EPOCH: epoch, "device": "cpu", **extra, "timestamp": int(time.time()),
            "time_this_iter_s": 60.0, "time_total_s": 60.0 * epoch, "training_iteration": epoch, "pid": 1234,
            "hostname": "node", "node_ip": "10.0.0.1", "time_since_restore": 60.0 * epoch,
            "iterations_since_restore": epoch, "done": False, "trial_id": "0", "date": "2026-12-07_00-00-00",
            "config": CONFIG}


def traced_per_item(n: int, make: Callable[[int], object]) -> float:
    """Bytes tracemalloc traces per item for n items made by `make` (kept alive while measured)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(i) for i in range(n)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return (after - before) / n


def tune_trials(n: int, extra: dict) -> tuple[float, float]:
    """(traced bytes, bytes of saved JSON) per Tune trial given ten results."""
    sizes = []

    def make(i: int) -> Trial:
        trial = Trial("gru4rec_trial", config=CONFIG, trial_id=f"{i:08x}", stub=True)
        for epoch in range(1, 11):
            trial.update_last_result(tune_result(epoch, extra))
        sizes.append(sum(len(part) for part in trial.get_json_state()))
        return trial
    return traced_per_item(n, make), sum(sizes) / len(sizes)


def optuna_trials(n: int) -> float:
    """Traced bytes per trial of an Optuna journal storage holding n pruned trials with ten values each."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        from optuna.storages.journal import JournalFileBackend
        storage = optuna.storages.JournalStorage(JournalFileBackend(os.path.join(folder, "journal")))
        study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(0))

        def make(i: int) -> optuna.trial.Trial:
            trial = study.ask(fixed_distributions=SPACE)
            trial.set_user_attr("tune_trial_id", f"{i:08x}")
            trial.set_user_attr("experiment", "xe_shared")
            for epoch in range(1, 11):
                trial.report(0.3 + epoch / 1000, epoch)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return optuna.trial.Trial(study, trial._trial_id)  # as the searcher keeps it
        return traced_per_item(n, make)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    print("| per trial | traced memory | saved JSON |\n|---|---|---|")
    for label, extra in (("Tune `Trial`, reports of MRR@20, epoch, device (now)", {}),
                         ("Tune `Trial`, fuller reports (+ recall, loss, timings, diverged)", FULLER)):
        memory, json_bytes = tune_trials(args.trials, extra)
        print(f"| {label} | {memory / 1000:.1f} kB | {json_bytes / 1000:.1f} kB |")
    print(f"| Optuna journal storage and the searcher's `Trial` | {optuna_trials(args.trials) / 1000:.1f} kB | - |")


if __name__ == "__main__":
    main()
