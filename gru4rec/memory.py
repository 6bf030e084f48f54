"""Device memory of one training run, part by part, derived from the code that allocates it.

A search sizes a trial's GPU share from this before any trial runs. Every part counts the tensors that
`Trainer` (train.py), `IndexedAdagradM` (optim.py), `SampleStore` (sampling.py), `evaluate` (evaluate.py) and
`Trainer.state_dict` allocate on the device; host memory (data, the building of the schedule, the files
written) is not counted. The figures are the bytes the tensors hold: the CUDA caching allocator's rounding
and cached free blocks come on top, which is what a caller's headroom is for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .batching import index_dtype
from .config import Config
from .cpu import UniqueRows
from .evaluate import CUDA_SCORE_CAP, EVAL_BATCH, SCORE_BUDGET
from .sampling import DEFAULT_STORE_SIZE

FLOAT = 4  # float32, the dtype of every parameter, state table and score
CUDA_CONTEXT = 500 << 20  # a process's CUDA context and library workspaces (the GPU measurement checks it)
CAPTURED_STEPS = 2  # on CUDA the trainer captures two step graphs (all slots active, or some masked)
EULER_GAMMA = 0.5772156649


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training run on its device, per part; `total` is the peak.

    The persistent parts live as long as the trainer. The transient ones (a training step, a refill of the
    sample store, an evaluation, a checkpoint) never overlap, so the peak adds only the largest of them.
    """

    device: str
    item_tables: int  # Wy, By and the input table (E, or Wx0 of mode none): float32, n_items + 1 rows each
    item_state: int  # Adagrad accumulators of the item tables, and their momenta when momentum > 0
    dense: int  # GRU weights and biases with their accumulators (+ momenta), the hidden state and column mask
    scratch: int  # CUDA: the optimiser's zeroed scratch copy of every item table; CPU: the unique-row marks
    schedule: int  # per step and slot an int32 input and target and a bool reset; a float32 active count per step
    sampling: int  # the int32 sample store, the sampling CDF over the items and the two logQ vectors
    step_pools: int  # CUDA: the private memory pools of the captured steps, which hold a step's temporaries
    context: int  # the CUDA context (0 on the CPU)
    step: int  # the temporaries of one training step at their peak (gathered rows, scores, gradients)
    refill: int  # a sample store refill: its float32 draws and the new int32 indices beside the old store
    evaluation: int  # the NaN check of the largest table, or the score chunks over the catalogue and their ranks
    checkpoint: int  # the optimiser state cloned by `Trainer.state_dict` (model tensors are not copied)

    PERSISTENT = ("item_tables", "item_state", "dense", "scratch", "schedule", "sampling", "step_pools", "context")
    TRANSIENT = ("step", "refill", "evaluation", "checkpoint")

    @property
    def persistent(self) -> int:
        return sum(getattr(self, name) for name in self.PERSISTENT)

    @property
    def transient(self) -> int:
        """The largest of the parts that exist only for a while (one at a time)."""
        return max(getattr(self, name) for name in self.TRANSIENT)

    @property
    def total(self) -> int:
        """The peak: the persistent parts plus the largest transient one."""
        return self.persistent + self.transient

    def lines(self) -> list[str]:
        """One line per part, then the peak."""
        rows = [(f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self) if f.name != "device"]
        rows.append((f"peak on {self.device}", self.total))
        return [f"{name:<16} {format_bytes(size):>12}" for name, size in rows]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def format_bytes(size: float) -> str:
    """MiB below a GiB, GiB above."""
    return f"{size / 2**30:,.2f} GiB" if size >= 2**30 else f"{size / 2**20:,.1f} MiB"


def parameter_counts(config: Config, n_items: int) -> tuple[int, int, int]:
    """Elements of the item tables, of the largest item table, and of the dense parameters (as in model.py)."""
    rows, layers = n_items + 1, config.layers
    tables = [rows * layers[-1], rows]  # Wy, By
    inputs, first, dense = layers[-1], 0, 0
    if config.embedding_mode == "separate":
        tables.append(rows * config.embedding)
        inputs = config.embedding
    elif config.embedding_mode == "none":
        h = layers[0]
        tables.append(rows * 3 * h)  # Wx0
        dense += 3 * h * h + 3 * h  # Urz0, Un0, b0
        inputs, first = h, 1
    for h in layers[first:]:
        dense += 3 * h * (inputs + h) + 6 * h  # a GRUCell's weights and biases
        inputs = h
    return sum(tables), max(tables), dense


def schedule_steps(n_events: int, n_sessions: int | None, batch_size: int) -> int:
    """Steps of `build_schedule`: the pairs spread over the slots, plus the idle slot-steps of the epoch's end.

    Once no session is left to start, the epoch lasts until the longest running one ends. With session
    lengths about exponential (memoryless), the slots' remaining lengths have the mean session length, the
    longest of B of them about the mean times the harmonic number H_B, so B * mean * (H_B - 1) slot-steps idle.
    Without `n_sessions` every event counts as a pair and there is no tail (an upper bound for real data).
    """
    if n_sessions is None:
        return math.ceil(n_events / batch_size)
    pairs = n_events - n_sessions
    harmonic = math.log(batch_size) + EULER_GAMMA + 1 / (2 * batch_size)
    tail = pairs / max(n_sessions, 1) * (harmonic - 1)
    return math.ceil(pairs / batch_size + tail)


def step_bytes(config: Config, n_items: int) -> int:
    """Peak temporaries of `Trainer._step` as run on CUDA (gather, forward, loss, backward, updates).

    Alive through the step: the gathered output rows (with the inputs' in mode shared), the score matrix,
    and per layer the forward's cache. On top, the largest of: the loss's score-sized temporaries (2 for
    cross-entropy, 6 for BPR-max, 7 with its ELU); the dense gradients merged and scaled by `step_dense`;
    or the row update of Wy (score gradient, dense gradients, the rows' gradient, their merged gradient,
    accumulator rows, momentum rows and the updated rows). The CPU path makes the rows unique first, which
    shrinks the row arrays but adds index temporaries: there it is a fair approximation, not a bound.
    """
    B, S, H = config.batch_size, config.n_sample, config.layers[-1]
    columns = B + S  # targets and samples, scored by every slot
    rows = columns + (B if config.embedding_mode == "shared" else 0)  # rows of Wy gathered and updated
    _, _, dense = parameter_counts(config, n_items)
    inputs = {"separate": config.embedding, "none": 3 * config.layers[0]}.get(config.embedding_mode, H)
    cache = 0
    for h in config.layers:  # the layer input, and r, z, n, the hidden product (3h), output, dropout mask
        cache += B * (inputs + 7 * h)
        inputs = h
    alive = rows * H + B * columns + cache + 2 * B * H  # + the output and the gradient of the input rows
    loss = B * columns * (2 if config.loss == "cross-entropy" else 6 + (config.elu_param > 0))
    dense_update = B * columns + 3 * dense
    row_update = B * columns + dense + (3 + (config.momentum > 0)) * rows * H
    indices = 8 * (2 * B + S + columns + rows) + 3 * FLOAT * columns  # int64 indices; bias, logQ, offsets
    return FLOAT * (alive + max(loss, dense_update, row_update)) + indices


def evaluation_bytes(config: Config, n_items: int, device: str) -> int:
    """Peak temporaries of `evaluate` with all EVAL_BATCH slots stepped (as on CUDA).

    First the NaN check runs `torch.isfinite` on each parameter, which is composite: a float32 `abs` copy
    and three bool tensors alive at once, 7 bytes per element of the largest table. Then the scores are
    computed a chunk of rows at a time: SCORE_BUDGET elements on the CPU; on CUDA an eighth of the free
    memory within SCORE_BUDGET..CUDA_SCORE_CAP, counted here at the cap (the most it takes). While a step
    needs several chunks, the next is computed before the last one is let go (two alive), and catalogues
    of 2^24 items or more are ranked in a float64 copy. Beside them live the slots' hidden state and output;
    the validation split's own schedule (9 bytes per slot and step) is not counted, its size being unknown here.
    """
    _, largest, _ = parameter_counts(config, n_items)
    budget = CUDA_SCORE_CAP if device == "cuda" else SCORE_BUDGET
    chunk = min(EVAL_BATCH, max(1, budget // n_items))
    alive = min(2 * chunk, EVAL_BATCH)  # score rows alive at the handover from one chunk to the next
    scores = n_items * (FLOAT * alive + (8 * chunk if n_items >= 1 << 24 else 0))
    return max((FLOAT + 3) * largest, scores + FLOAT * EVAL_BATCH * 2 * sum(config.layers))


def trial_memory(config: Config, n_items: int, n_events: int, n_sessions: int | None = None,
                 device: str = "cuda") -> MemoryEstimate:
    """The device memory of training `config` on `n_items` items and `n_events` training events.

    `n_sessions` (when known) refines the schedule's length; `device` is "cuda" or "cpu" (the CPU path
    has no optimiser scratch tables, no captured steps and no CUDA context, but marks unique rows).
    """
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r}: use 'cuda' or 'cpu'")
    cuda = device == "cuda"
    rows, B, S = n_items + 1, config.batch_size, config.n_sample
    copies = 2 if config.momentum > 0 else 1  # accumulator, and momentum
    tables, _, dense = parameter_counts(config, n_items)
    index = index_dtype(n_items).itemsize  # of the schedule and the store
    steps = schedule_steps(n_events, n_sessions, B)
    step_rows = B * (2 if config.embedding_mode == "shared" else 1) + S
    marks = 8 * rows if UniqueRows.worth_marking(rows, step_rows) else 0
    store = (max(1, DEFAULT_STORE_SIZE // S) * S) if S > 0 else 0  # entries
    step = step_bytes(config, n_items)
    return MemoryEstimate(
        device=device,
        item_tables=FLOAT * tables,
        item_state=FLOAT * tables * copies,
        dense=FLOAT * (dense * (1 + copies) + B * sum(config.layers)) + B + S,
        scratch=FLOAT * tables if cuda else marks,
        schedule=steps * (B * (2 * index + 1) + FLOAT),
        sampling=store * index + FLOAT * (n_items + 2 * rows),
        step_pools=CAPTURED_STEPS * step if cuda else 0,
        context=CUDA_CONTEXT if cuda else 0,
        step=step,
        refill=store * (FLOAT + index),
        evaluation=evaluation_bytes(config, n_items, device),
        checkpoint=FLOAT * (tables + dense) * copies,
    )
