"""Negative sampling proportional to support^alpha, served from a pre-generated sample store."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

DEFAULT_STORE_SIZE = 10_000_000


class SampleStore:
    """Holds many minibatches' worth of samples on the device, one row per step, refilled when used up.

    Generation is inverse-CDF by a vectorised `searchsorted`. The store is reproducible from the
    generator state at its last refill, which is all a checkpoint needs to keep. The read position
    lives on the host (`ptr`, rows reserved) and on the device (`ptr_dev`, rows taken), so a step
    captured in a CUDA graph can take its row while the host decides when to refill, in place.
    """

    def __init__(self, counts: np.ndarray, alpha: float, n_sample: int, generator: torch.Generator,
                 device: torch.device, store_size: int = DEFAULT_STORE_SIZE):
        weights = torch.as_tensor(counts, dtype=torch.float64) ** alpha
        cdf = torch.cumsum(weights, 0) / weights.sum()
        cdf[-1] = 1.0
        self.cdf = cdf.to(device=device, dtype=torch.float32)
        self.n_items = len(counts)
        self.n_sample = n_sample
        self.rows = max(1, store_size // n_sample) if n_sample > 0 else 0
        self.generator = generator
        self.device = device
        self.int32 = self.n_items < 2 ** 31  # half the store's memory for any real catalogue
        self.store = torch.empty((0, n_sample), dtype=torch.int32 if self.int32 else torch.int64, device=device)
        self.ptr = 0
        self.ptr_dev = torch.zeros(1, dtype=torch.int64, device=device)
        self.fill_state: torch.Tensor | None = None

    def _fill(self) -> None:
        self.fill_state = self.generator.get_state()
        u = torch.rand(self.rows * self.n_sample, generator=self.generator, device=self.device)
        fresh = self._inverse_cdf(u).clamp_(max=self.n_items - 1).view(self.rows, self.n_sample)
        if self.store.shape == fresh.shape:
            self.store.copy_(fresh)  # same address: captured steps keep reading the right buffer
        else:
            self.store = fresh
        self.ptr = 0
        self.ptr_dev.zero_()

    def _inverse_cdf(self, u: torch.Tensor) -> torch.Tensor:
        """Item index of each uniform draw; on the CPU, chunks run on all torch threads at once."""
        threads = torch.get_num_threads()
        if u.device.type != "cpu" or threads == 1 or len(u) < 1 << 20:
            return torch.searchsorted(self.cdf, u, right=True, out_int32=self.int32)
        # torch.searchsorted is single-threaded on the CPU. The workers write into slices of one output made
        # here: memory a worker thread allocates stays in its own malloc arena, which malloc_trim does not shrink.
        out = torch.empty(len(u), dtype=self.store.dtype)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda part: torch.searchsorted(self.cdf, part[0], right=True, out_int32=self.int32,
                                                          out=part[1]), zip(u.chunk(threads), out.chunk(threads))))
        return out

    def reserve(self) -> None:
        """Host side of a step: refill when every row is used, then count one row as taken."""
        if self.ptr >= len(self.store):
            self._fill()
        self.ptr += 1

    def take(self) -> torch.Tensor:
        """Device side of a step: the next row as int64 indices (no host involvement, so it can be captured)."""
        row = self.store.index_select(0, self.ptr_dev)[0].long()
        self.ptr_dev.add_(1)
        return row

    def next(self) -> torch.Tensor:
        """The samples for one step."""
        self.reserve()
        return self.take()

    def state_dict(self) -> dict:
        """Compact state: generator state at the last refill and the read position."""
        return {"fill_state": self.fill_state, "ptr": self.ptr}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the store exactly as it was, then restore the generator to its current state."""
        if state["fill_state"] is None:
            self.store = self.store[:0]
            self.ptr = 0
            self.ptr_dev.zero_()
            return
        current = self.generator.get_state()
        self.generator.set_state(state["fill_state"])
        self._fill()
        self.generator.set_state(current)
        self.ptr = int(state["ptr"])
        self.ptr_dev.fill_(self.ptr)
