"""Training speed (events/s, minibatches/s) over a grid of losses, batch and layer sizes, and options.

Warm-up steps are excluded; each figure is the median of repeats of a fixed number of steps.
"""
from __future__ import annotations

import itertools

import torch

from common import base_arguments, dataset, environment, median_time, write_results
from gru4rec.config import Config
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


def main() -> None:
    p = base_arguments(__doc__)
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--quick", action="store_true", help="batch 32 and 128, layers 100 only")
    args = p.parse_args()
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
