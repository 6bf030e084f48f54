"""Evaluation speed (predictions/s at 512 slots, all items ranked) and peak memory."""
from __future__ import annotations

import resource

import torch

from common import base_arguments, dataset, environment, median_time, test_split, write_results
from gru4rec.config import Config
from gru4rec.evaluate import evaluate
from gru4rec.model import GRU4Rec


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def main() -> None:
    p = base_arguments(__doc__)
    p.add_argument("--layers", default="100,500")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.datasets.split(","):
        train = dataset(name)
        test = test_split(name, train)
        for size in map(int, args.layers.split(",")):
            model = GRU4Rec(Config(layers=[size]), train.n_items).to(device)
            n = evaluate(model, test, batch_size=512).n  # warm-up, and the prediction count
            seconds = median_time(lambda: evaluate(model, test, cutoffs=[1, 5, 10, 20], batch_size=512),
                                  args.repeats, device)
            rows.append({"data": name, "items": train.n_items, "layers": size, "predictions": n,
                         "predictions/s": n / seconds, "peak MB": peak_memory_mb(device)})
            print(rows[-1], flush=True)
    write_results("eval_speed", environment(device), rows)


if __name__ == "__main__":
    main()
