"""One step function, run eagerly or captured once in a CUDA graph and replayed (one launch per step).

The graph API used here (`torch.cuda.CUDAGraph` with `register_generator_state`, `torch.cuda.graph`) is
complete from torch 2.4, the first release with `register_generator_state` (pytorch/pytorch#114068).
From torch 2.14 a graph registers the generators its kernels draw from by itself, and the explicit call
is deprecated (pytorch/pytorch#176753), so it is made only before that release.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.torch_version import TorchVersion

GRAPHS_REGISTER_GENERATORS = TorchVersion(torch.__version__) >= "2.14"
_warmup_streams: dict[int, torch.cuda.Stream] = {}


def warmup_stream() -> torch.cuda.Stream:
    """The one side stream of the current device that every warm-up runs on: torch keeps a cuBLAS workspace
    for each stream a product ever ran on, so a new stream per warm-up would pile up device memory."""
    device = torch.cuda.current_device()
    if device not in _warmup_streams:
        _warmup_streams[device] = torch.cuda.Stream()
    return _warmup_streams[device]


class CapturedStep:
    """Calls `fn` eagerly; with `capture` (CUDA only) it warms up, captures `fn` and replays the graph.

    `fn` must read its inputs from, and write its results to, tensors whose addresses never change,
    and keep host-side bookkeeping out of itself: a replay runs only the recorded kernels. On the CPU
    the same `fn` runs eagerly, which is how the captured code is tested without a GPU.

    The graph and its private memory pool live exactly as long as this object: the owner holds the
    step, and `fn` must not hold the owner (a trainer passes a weak reference), so that dropping the
    owner frees both; `free_memory` then gives the pool's blocks back to the device.
    """

    def __init__(self, fn: Callable[[], None], capture: bool, generators: tuple[torch.Generator, ...] = (),
                 warmup: int = 3):
        self.fn = fn
        self.capture = capture
        self.generators = generators
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        if not self.capture:
            self.fn()
        elif self.graph is not None:
            self.graph.replay()
        elif self.calls < self.warmup:  # real steps, on a side stream as capture requires
            stream = warmup_stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(stream)
        else:
            graph = torch.cuda.CUDAGraph()
            if not GRAPHS_REGISTER_GENERATORS:
                for generator in self.generators:
                    graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                self.fn()
            self.graph = graph
            graph.replay()  # capture records without running: this call's step runs now
        self.calls += 1
