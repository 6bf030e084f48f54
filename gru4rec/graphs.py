"""One step function, run eagerly or captured once in a CUDA graph and replayed (one launch per step)."""
from __future__ import annotations

from typing import Callable

import torch


class CapturedStep:
    """Calls `fn` eagerly; with `capture` (CUDA only) it warms up, captures `fn` and replays the graph.

    `fn` must read its inputs from, and write its results to, tensors whose addresses never change,
    and keep host-side bookkeeping out of itself: a replay runs only the recorded kernels. On the CPU
    the same `fn` runs eagerly, which is how the captured code is tested without a GPU.
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
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream().wait_stream(stream)
        else:
            graph = torch.cuda.CUDAGraph()
            for generator in self.generators:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                self.fn()
            self.graph = graph
            graph.replay()  # capture records without running: this call's step runs now
        self.calls += 1
