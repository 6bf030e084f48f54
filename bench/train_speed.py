"""Training speed (events/s, minibatches/s) over a grid of losses, batch and layer sizes, and options.

Warm-up steps are excluded; each figure is the median of repeats of a fixed number of steps.
With `--against-official PATH` it instead runs the official code in PATH and `gru4rec run` alternately
on the same data (whole runs: 3 epochs and the test evaluation, both at their default thread counts)
and prints their events/s, evaluation predictions/s and Recall/MRR@20 with the ratios.
"""
from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import torch

from common import SHARED, base_arguments, dataset, environment, median_time, write_results
from official import compare, int32_sessions
from gru4rec.config import Config, parse_param_string
from gru4rec.train import Trainer


def measure(config: Config, data, device, steps: int, repeats: int) -> dict:
    trainer = Trainer(config, data, device=device)
    trainer.start_epoch()
    steps = min(steps, trainer.n_steps // (repeats + 1))
    position = iter(range(trainer.n_steps))

    def run() -> None:
        for _ in range(steps):
            trainer.run_step(next(position))

    run()  # warm-up
    seconds = median_time(run, repeats, trainer.device)
    events = float(trainer.n_active[:steps].sum())
    return {"mb/s": steps / seconds, "events/s": events / seconds}


# The settings compared with the official code: the RSC15 best config (cross-entropy, layers 100, batch 32),
# and the RetailRocket best BPR-max config at batch 128; 3 epochs each, shared embedding, n_sample 2048.
OFFICIAL_SETTINGS = {
    "xe layers 100 batch 32": "loss=cross-entropy,layers=100,batch_size=32,dropout_p_embed=0.0,dropout_p_hidden=0.4,"
                              "learning_rate=0.2,momentum=0.2,sample_alpha=0.5,n_sample=2048,logq=1.0,"
                              "constrained_embedding=True,embedding=0,n_epochs=3",
    "bpr-max layers 224 batch 128": "loss=bpr-max,layers=224,batch_size=128,dropout_p_embed=0.5,dropout_p_hidden=0.05,"
                                    "learning_rate=0.05,momentum=0.4,sample_alpha=0.4,n_sample=2048,bpreg=1.95,"
                                    "elu_param=0.5,constrained_embedding=True,embedding=0,n_epochs=3",
}


def profile(name: str, setting: str, steps: int, threads: int) -> None:
    """torch.profiler over `steps` training steps of one official setting: where a step's CPU time goes, by op."""
    config = Config.from_dict(parse_param_string(OFFICIAL_SETTINGS[setting]))
    trainer = Trainer(config, dataset(name), device=torch.device("cpu"), threads=threads)
    trainer.start_epoch()
    for position in range(50):  # warm-up
        trainer.run_step(position)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for position in range(50, 50 + steps):
            trainer.run_step(position)
        seconds = time.perf_counter() - start
    print(f"{name}: {setting}, {threads} thread(s): {1000 * seconds / steps:.2f} ms per step under the profiler")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def against_official(path: Path, datasets: list[str], repeats: int) -> None:
    """Both implementations alternately per setting and dataset; medians and ratios in one table."""
    rows = []
    for name in datasets:
        with tempfile.TemporaryDirectory() as directory:
            train, test = int32_sessions(SHARED / name / "train_full.tsv", SHARED / name / "test.tsv", Path(directory))
            for setting, params in OFFICIAL_SETTINGS.items():
                rows.append(compare(path, f"{name}: {setting}", params, train, test, repeats).row())
    write_results("against_official", {**environment(torch.device("cpu")), "official": str(path),
                                       "repeats": repeats}, rows)


def main() -> None:
    p = base_arguments(__doc__)
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--quick", action="store_true", help="batch 32 and 128, layers 100 only")
    p.add_argument("--against-official", type=Path, metavar="PATH",
                   help="a checkout of the official GRU4Rec_PyTorch_Official to run side by side (CPU)")
    p.add_argument("--profile", metavar="SETTING", choices=sorted(OFFICIAL_SETTINGS),
                   help="profile the training step of one official setting (on the first of --datasets)")
    args = p.parse_args()
    if args.profile:
        profile(args.datasets.split(",")[0], args.profile, args.steps, args.threads or 1)
        return
    if args.against_official:
        names = [n for n in args.datasets.split(",") if n != "synthetic_1m"]
        against_official(args.against_official, names, args.repeats)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches, layers = ((32, 128), (100,)) if args.quick else ((32, 64, 128, 256), (100, 500))
    grid = [dict(loss=loss, batch_size=b, layers=[h]) for loss, b, h in itertools.product(
        ("cross-entropy", "bpr-max"), batches, layers)]
    grid += [dict(loss="cross-entropy", batch_size=32, layers=[100], dropout_p_embed=0.2, dropout_p_hidden=0.3,
                  momentum=0.3)]
    rows = []
    for name in args.datasets.split(","):
        data = dataset(name)
        for params in grid:
            config = Config(n_sample=2048, constrained_embedding=True, embedding=0, logq=1.0, **params)
            result = measure(config, data, device, args.steps, args.repeats)
            extras = "dropout+momentum" if config.momentum else "-"
            rows.append({"data": name, "items": data.n_items, "loss": config.loss, "batch": config.batch_size,
                         "layers": config.layers[0], "options": extras, **result})
            print(rows[-1], flush=True)
    write_results("train_speed", environment(device), rows)


if __name__ == "__main__":
    main()
