"""CPU runtime settings for the per-step work: freed memory kept for reuse, and the thread count per shape.

A training step allocates a dozen temporaries of one to a few MB (scores, gradients, gathered rows).
glibc serves blocks that large with a fresh `mmap` each time and returns them on free, so every step
pays a page fault per 4 KB touched: over a thousand faults a step at batch 128, more time than the
arithmetic. Raising glibc's mmap and trim thresholds keeps such blocks in the heap for the next step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import time
from typing import Callable

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for this setting on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has `mallopt` and `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError, TypeError):
        return None
    return libc


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to serve blocks up to 32 MB from its heap and to keep freed memory; False where there is no glibc.

    Process-wide and done once; the cost is that the process keeps its peak of temporaries mapped.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Hand the heap memory freed so far back to the system (what `keep_freed_memory` keeps); False without glibc.

    For a process that runs one training after another: without it, each keeps the peak of temporaries of
    the largest one before it.
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _default_threads() -> int:
    """torch's thread count when first asked (before any choice here changed it)."""
    return torch.get_num_threads()


def thread_candidates() -> list[int]:
    """Thread counts worth trying: one, half and all of torch's default."""
    default = _default_threads()
    return sorted({1, max(1, default // 2), default})


class ThreadChoice:
    """Picks the fastest torch thread count for a training step by timing real steps, interleaved.

    At small shapes one thread can beat several (the work per op is too small to share), at larger
    ones it cannot; which wins depends on the machine, so it is measured: `rounds` rounds of `chunk`
    steps per candidate, the candidates' order alternating, after `warmup` untimed steps. The thread
    count does not change the results (the tests check this), so the choice only affects speed.
    """

    def __init__(self, candidates: list[int], rounds: int = 4, chunk: int = 4, warmup: int = 2):
        self.candidates = candidates
        order = [candidates if r % 2 == 0 else candidates[::-1] for r in range(rounds)]
        self.plan = [c for round_ in order for c in round_ for _ in range(chunk)]
        self.seconds = dict.fromkeys(candidates, 0.0)
        self.warmup = warmup
        self.chosen: int | None = candidates[0] if len(candidates) == 1 else None

    def begin(self) -> None:
        """Set the chosen thread count (at the start of an epoch: something else may have changed it)."""
        if self.chosen is not None:
            torch.set_num_threads(self.chosen)

    def run(self, step: Callable[[], object]) -> None:
        """Run one step under the thread count being tried, or under the chosen one once decided."""
        if self.chosen is not None:
            step()
            return
        if self.warmup > 0:
            self.warmup -= 1
            step()
            return
        threads = self.plan.pop(0)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        step()
        self.seconds[threads] += time.perf_counter() - start
        if not self.plan:
            self.chosen = min(self.seconds, key=self.seconds.get)
            torch.set_num_threads(self.chosen)


class UniqueRows:
    """`torch.unique(values, return_inverse=True)` for indices below `size`, optionally by marking a table.

    A step's rows are about two thousand indices; sorting them costs the same whatever the catalogue,
    while marking them in a table of `size` entries and reading the marks back costs about a third of
    that when the catalogue has at most a few times as many items (`worth_marking`).
    """

    def __init__(self, size: int, by_marks: bool):
        self.marks = torch.zeros(size, dtype=torch.int64) if by_marks else None

    @staticmethod
    def worth_marking(size: int, n_values: int) -> bool:
        return size <= 8 * n_values

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.marks is None:
            return torch.unique(values, return_inverse=True)
        marks = self.marks.index_fill_(0, values, 1)
        rows = marks.nonzero().squeeze(1)
        marks.index_copy_(0, rows, torch.arange(len(rows)))
        inverse = marks.index_select(0, values)
        marks.index_fill_(0, rows, 0)
        return rows, inverse
