"""Time to fill the negative-sample store with 10^7 samples, for 3k and 1M items."""
from __future__ import annotations

import numpy as np
import torch

from common import base_arguments, environment, median_time, write_results
from gru4rec.sampling import DEFAULT_STORE_SIZE, SampleStore


def main() -> None:
    p = base_arguments(__doc__)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    for n_items in (3_000, 1_000_000):
        counts = rng.zipf(1.5, n_items).clip(max=10**6)
        store = SampleStore(counts, 0.5, 2048, torch.Generator(device=device).manual_seed(0), device,
                            DEFAULT_STORE_SIZE)
        store._fill()  # warm-up
        seconds = median_time(store._fill, args.repeats, device)
        rows.append({"items": n_items, "samples": store.rows * store.n_sample, "seconds": seconds,
                     "samples/s": store.rows * store.n_sample / seconds})
        print(rows[-1], flush=True)
    write_results("sample_store", environment(device), rows)


if __name__ == "__main__":
    main()
