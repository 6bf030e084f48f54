"""The training loop: session-parallel steps, epoch by epoch, with a per-epoch callback and resumable state."""
from __future__ import annotations

import hashlib
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .batching import build_schedule
from .config import Config
from .cpu import ThreadChoice, UniqueRows, keep_freed_memory, release_freed_memory, thread_candidates
from .data import SessionData
from .evaluate import EvalResult, evaluate
from .graphs import CapturedStep
from .losses import bpr_max, cross_entropy
from .model import GRU4Rec
from .optim import IndexedAdagradM
from .sampling import DEFAULT_STORE_SIZE, SampleStore

Progress = Callable[[Iterable, str], Iterable]
CHECK_EVERY = 64  # steps between reads of the loss sum (one host synchronisation each)


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN)."""


@dataclass
class EpochInfo:
    """What the per-epoch callback receives."""

    epoch: int
    loss: float
    seconds: float
    events_per_s: float
    minibatches_per_s: float
    metrics: EvalResult | None = None

    def line(self) -> str:
        """The official run.py per-epoch line."""
        return (f"Epoch{self.epoch} --> loss: {self.loss:.6f} ({self.seconds:.2f}s) "
                f"[{self.minibatches_per_s:.2f} mb/s | {self.events_per_s:.0f} e/s]")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_memory(device: str | torch.device) -> None:
    """Give the memory of ended trainings back: the cached CUDA blocks, or the heap glibc keeps for reuse.

    Call it once a trainer is gone (its object freed) in a process that goes on to other work.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    release_freed_memory()


def weak_step(trainer: "Trainer", masked: bool) -> Callable[[], None]:
    """The trainer's step as a function that holds the trainer weakly, for a CapturedStep the trainer owns."""
    ref = weakref.ref(trainer)

    def step() -> None:
        owner = ref()
        if owner is None:
            raise ReferenceError("the trainer of this step was freed")
        owner._step(masked)
    return step


class Trainer:
    """Trains a GRU4Rec model on one dataset; `epoch` counts finished epochs and survives save/restore."""

    def __init__(self, config: Config, data: SessionData, device: str | torch.device | None = None,
                 store_size: int = DEFAULT_STORE_SIZE, cuda_graphs: bool | None = None, threads: int | None = None):
        """`threads` fixes torch's CPU thread count for training; None on the CPU times the first steps with
        one, half and all of torch's threads and keeps the fastest (see `gru4rec.cpu.ThreadChoice`).
        `cuda_graphs` captures each step in a CUDA graph and replays it (default: on CUDA; CUDA only)."""
        data.check_schedule(config.batch_size, "train on")
        self.config = config
        self.data = data
        self.device = torch.device(device) if device is not None else default_device()
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device")
        self.thread_choice: ThreadChoice | None = None
        if self.device.type == "cpu":
            keep_freed_memory()
            self.thread_choice = ThreadChoice(thread_candidates() if threads is None else [threads])
        self.model = GRU4Rec(config, data.n_items).to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.optimizer = IndexedAdagradM(self.model.dense_parameters(), self.model.item_tables(),
                                         config.learning_rate, config.momentum)
        counts = data.item_counts()
        self.store = SampleStore(counts, config.sample_alpha, config.n_sample, self.generator, self.device,
                                 store_size)
        # logQ correction: log of the training count for target columns, alpha times it for samples.
        self.target_log_q = torch.as_tensor(np.append(np.log(np.maximum(counts, 1)), 0.0), dtype=torch.float32,
                                            device=self.device) * config.logq
        self.sample_log_q = self.target_log_q * config.sample_alpha
        # On the CPU each step's item rows are made unique before gathering (see `_step`).
        n_rows = config.batch_size * (2 if self.model.mode == "shared" else 1) + config.n_sample
        self.unique_rows = (UniqueRows(data.n_items + 1, UniqueRows.worth_marking(data.n_items + 1, n_rows))
                            if self.device.type == "cpu" else None)
        schedule = build_schedule(data.items, data.offsets, config.batch_size, pad=self.model.pad,
                                  stop_below=2 if config.n_sample == 0 else 1)
        self.n_steps = schedule.n_steps
        self.n_pairs = schedule.n_pairs
        # The schedule stays as compact as it was built (int32 items, bool resets: 9 bytes a slot); what a
        # step derives from it (masks, logQ of the targets) is computed per step, never stored per slot.
        self.inputs = torch.as_tensor(schedule.inputs, device=self.device)
        self.targets = torch.as_tensor(schedule.targets, device=self.device)
        self.resets = torch.as_tensor(schedule.resets, device=self.device)
        self.n_active = torch.as_tensor(schedule.n_active, device=self.device, dtype=torch.float32)
        self.full = schedule.n_active == config.batch_size  # host-side: steps that need no masking
        del schedule
        if self.device.type == "cpu":
            release_freed_memory()  # the building's temporaries; the steps' own are kept from here on
        self.epoch = 0
        # Static buffers of the step: a captured step reads and writes only these.
        self.cursor = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.hidden = self.model.init_hidden(config.batch_size, self.device)
        self.valid = torch.ones(config.batch_size + config.n_sample, dtype=torch.bool, device=self.device)
        self.step_loss = torch.zeros((), device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        # The steps hold the trainer weakly: no reference cycle, so a trainer, and with it the steps' graphs
        # and their memory pools, is freed as soon as it is dropped.
        self.steps = {masked: CapturedStep(weak_step(self, masked), self.cuda_graphs, (self.generator,))
                      for masked in (False, True)}

    @torch.no_grad()
    def _step(self, masked: bool) -> None:
        """One minibatch at `self.cursor`: forward, loss, gradients by hand, optimiser update.

        Reads and writes only static buffers (capturable); `masked` excludes idle slots.
        """
        cfg, model, opt, B = self.config, self.model, self.optimizer, self.config.batch_size
        t = self.cursor
        reset = self.resets.index_select(0, t)[0][:, None]
        for buffer in self.hidden:
            buffer.masked_fill_(reset, 0.0)
        inputs = self.inputs.index_select(0, t)[0].long()
        targets = self.targets.index_select(0, t)[0].long()
        samples = self.store.take() if cfg.n_sample > 0 else None
        cols = torch.cat([targets, samples]) if samples is not None else targets
        mask = None
        if masked:
            self.valid[:B] = targets != model.pad
            mask = self.valid
        shared = model.mode == "shared"
        # Output rows (with the input rows in shared mode) are gathered once and updated once. On the CPU
        # each distinct row only once: popular items repeat among the samples, so the matmuls shrink and
        # the optimiser needs no merging (on accelerators `unique` would synchronise with the host).
        rows = torch.cat([inputs, cols]) if shared else cols
        col_index = None
        if self.unique_rows is not None:
            rows, index = self.unique_rows(rows)
            col_index = index[B:] if shared else index
        w = model.Wy.index_select(0, rows)
        if not shared:
            x = model.input_table.index_select(0, inputs)
        elif col_index is None:
            x = w[:B]
        else:
            x = w.index_select(0, index[:B])
        w_out = w if col_index is not None or not shared else w[B:]
        b = model.By.index_select(0, cols)
        hidden = list(self.hidden)
        h, cache = model.train_forward(x, hidden, self.generator)
        offsets = b  # per column: the bias, minus the logQ correction of cross-entropy
        if cfg.loss == "cross-entropy" and cfg.logq > 0:
            log_q = self.target_log_q.index_select(0, targets)
            if samples is not None:
                log_q = torch.cat([log_q, self.sample_log_q.index_select(0, samples)])
            offsets = b - log_q
        if col_index is None:
            scores = torch.addmm(offsets, h, w_out.T)
        else:
            scores = (h @ w_out.T).index_select(1, col_index).add_(offsets)
        if cfg.loss == "cross-entropy":
            losses, grad = cross_entropy(scores, mask, scale=1.0 / B)
        else:
            losses, grad = bpr_max(scores, mask, cfg.elu_param, cfg.bpreg, scale=1.0 / B)
        if col_index is not None:  # sum the gradients of repeated columns into their row
            grad_rows = grad.new_zeros((B, len(rows))).index_add_(1, col_index, grad)
        else:
            grad_rows = grad
        dense_grads, dx = model.train_backward(cache, grad_rows @ w_out)
        grad_w = grad_rows.T @ h
        opt.step_dense(dense_grads)
        if not shared:
            opt.step_rows(model.input_table, inputs, dx, x)
        elif col_index is None:
            grad_w = torch.cat([dx, grad_w])
        else:
            grad_w.index_add_(0, index[:B], dx)
        opt.step_rows(model.Wy, rows, grad_w, w, unique_rows=col_index is not None)
        if col_index is None:
            opt.step_rows(model.By, cols, grad.sum(dim=0), b)
        else:  # per distinct row; in shared mode only the rows of the scored columns (inputs have no bias)
            bias_rows, grad_b = rows, grad_rows.sum(dim=0)
            if shared:
                scored = torch.zeros(len(rows), dtype=torch.bool).index_fill_(0, col_index, True)
                bias_rows, grad_b = rows[scored], grad_b[scored]
            opt.step_rows(model.By, bias_rows, grad_b, unique_rows=True)
        for buffer, new in zip(self.hidden, hidden):
            buffer.copy_(new)
        loss = losses.sum() / B
        self.step_loss.copy_(loss)
        self.loss_sum.add_(loss * self.n_active.index_select(0, t)[0])
        self.cursor.add_(1)

    def run_step(self, t: int) -> torch.Tensor:
        """Run step `t` of the epoch (the cursor must stand at t); returns the step loss buffer."""
        if self.config.n_sample > 0:
            self.store.reserve()
        self.steps[not self.full[t]]()
        return self.step_loss

    def start_epoch(self) -> None:
        """Reset the per-epoch buffers: cursor, hidden state and loss sum."""
        self.model.train()
        self.cursor.zero_()
        for buffer in self.hidden:
            buffer.zero_()
        self.loss_sum.zero_()

    def train_epoch(self, progress: Progress | None = None) -> EpochInfo:
        """Run one epoch over the whole training data and return its summary."""
        self.start_epoch()
        steps: Iterable[int] = range(self.n_steps)
        if progress is not None:
            steps = progress(steps, f"epoch {self.epoch + 1}")
        start = time.perf_counter()
        choice = self.thread_choice
        threads = torch.get_num_threads()  # given back afterwards: the evaluation's shapes want their own
        if choice is not None:
            choice.begin()
        try:
            for t in steps:
                if choice is None:
                    self.run_step(t)
                else:
                    choice.run(lambda: self.run_step(t))
                if t % CHECK_EVERY == CHECK_EVERY - 1:
                    self._check_loss(t)
            self._check_loss(self.n_steps - 1)
        finally:
            torch.set_num_threads(threads)
        mean_loss = self.loss_sum.item() / max(self.n_pairs, 1)
        seconds = time.perf_counter() - start
        self.epoch += 1
        return EpochInfo(epoch=self.epoch, loss=mean_loss, seconds=seconds,
                         events_per_s=self.n_pairs / seconds, minibatches_per_s=self.n_steps / seconds)

    def _check_loss(self, t: int) -> None:
        """Stop on a NaN or infinite loss; the running sum carries it, so reading it now and then is enough."""
        total = self.loss_sum.item()
        if not np.isfinite(total):
            raise TrainingError(f"the loss became {total} by step {t + 1} of epoch {self.epoch + 1}; "
                                "try a lower learning_rate or a different loss setting")

    def fit(self, n_epochs: int | None = None, callback: Callable[[EpochInfo], None] | None = None,
            valid: SessionData | None = None, cutoffs: Sequence[int] = (20,), mode: str = "standard",
            progress: Progress | None = None) -> GRU4Rec:
        """Train until `n_epochs` (default: config.n_epochs) epochs are done, continuing from `self.epoch`.

        After every epoch `callback` gets the epoch's loss and speed, with metrics on `valid` if given.
        """
        n_epochs = self.config.n_epochs if n_epochs is None else n_epochs
        while self.epoch < n_epochs:
            info = self.train_epoch(progress)
            if valid is not None:
                info.metrics = evaluate(self.model, valid, cutoffs, mode, progress=progress,
                                        cuda_graphs=self.cuda_graphs)
            if callback is not None:
                callback(info)
        return self.model

    def state_dict(self) -> dict:
        """Everything needed to continue training exactly: model, optimiser, sample store, RNG, epoch."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "store": self.store.state_dict(), "generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state; one saved on another kind of device continues with a derived seed.

        CPU and CUDA generators have states of different kinds, so a state taken on one cannot drive
        the other: the random streams (samples, dropout) are then reseeded from the saved state, and
        the sample store is refilled; model, optimiser and epoch continue exactly.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        saved = state["generator"]
        if saved.shape == self.generator.get_state().shape:
            self.generator.set_state(saved)
            self.store.load_state_dict(state["store"])
            return
        digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        self.store.load_state_dict({"fill_state": None, "ptr": 0})
