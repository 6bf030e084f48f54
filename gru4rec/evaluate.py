"""Next-item evaluation: recall and MRR at cut-offs from full-catalogue ranks, three tie modes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from .batching import build_schedule
from .cpu import keep_freed_memory
from .data import SessionData
from .graphs import CapturedStep
from .model import GRU4Rec

TIE_MODES = ("standard", "conservative", "median")
EVAL_BATCH = 512  # session slots of the evaluation, as in the official code
SCORE_BUDGET = 1 << 25  # score-matrix elements computed at once on the CPU (128 MB of float32)
CUDA_SCORE_SHARE = 8  # on CUDA, an eighth of the free device memory holds the scores of one chunk ...
CUDA_SCORE_CAP = 1 << 28  # ... up to 2^28 elements (1 GB of float32): a 512-slot batch at 524,288 items


@dataclass
class EvalResult:
    """Recall@k and MRR@k per cut-off over `n` predictions; `n_dropped` test events had unknown items."""

    recall: dict[int, float]
    mrr: dict[int, float]
    n: int
    n_dropped: int = 0
    cutoffs: list[int] = field(default_factory=list)

    def value(self, metric: str, cutoff: int) -> float:
        """'recall' or 'mrr' at a cut-off."""
        if metric not in ("recall", "mrr"):
            raise ValueError(f"metric {metric!r}: use recall or mrr")
        return (self.recall if metric == "recall" else self.mrr)[cutoff]

    def lines(self) -> list[str]:
        """The official run.py result lines."""
        return [f"Recall@{k}: {self.recall[k]:.6f} MRR@{k}: {self.mrr[k]:.6f}" for k in self.cutoffs]


def ranks_of_targets(scores: torch.Tensor, targets: torch.Tensor, mode: str, in_place: bool = False) -> torch.Tensor:
    """Rank of each row's target among all columns of `scores` under the tie mode (float).

    The comparisons are written as float 0/1 into `scores` itself (a copy unless `in_place`), then summed:
    on the CPU that is several times faster than a boolean comparison and an integer count, and exact
    while a row has fewer than 2^24 columns.
    """
    if mode not in TIE_MODES:
        raise ValueError(f"tie mode {mode!r}: allowed values are {', '.join(TIE_MODES)}")
    if scores.shape[1] >= 1 << 24:
        scores = scores.double()
    elif not in_place:
        scores = scores.clone()
    t = scores.gather(1, targets[:, None])
    if mode == "standard":
        return scores.gt_(t).sum(dim=1).add_(1)
    if mode == "conservative":
        return scores.ge_(t).sum(dim=1)
    greater = scores.gt(t).sum(dim=1)
    equal = scores.eq_(t).sum(dim=1)
    return greater + 0.5 * (equal - 1) + 1


def cuda_free_bytes(device: torch.device) -> int:
    """Device memory a new allocation can get: the driver's free memory and the blocks torch caches unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def score_budget(device: torch.device, free_bytes: int | None = None) -> int:
    """Score elements to compute at once: SCORE_BUDGET on the CPU (cache-sized chunks are fastest there);
    on CUDA a share of the free memory (`free_bytes`, default: read from the device), within
    SCORE_BUDGET..CUDA_SCORE_CAP, so that a large catalogue is scored in few, large products."""
    if device.type != "cuda":
        return SCORE_BUDGET
    free = cuda_free_bytes(device) if free_bytes is None else free_bytes
    return min(CUDA_SCORE_CAP, max(SCORE_BUDGET, free // (CUDA_SCORE_SHARE * 4)))


@torch.no_grad()
def evaluate(model: GRU4Rec, data: SessionData, cutoffs: Sequence[int] = (20,), mode: str = "standard",
             batch_size: int = EVAL_BATCH, progress: Callable[[Iterable, str], Iterable] | None = None,
             fixed_shapes: bool | None = None, cuda_graphs: bool | None = None) -> EvalResult:
    """Evaluate next-item prediction on `data` (built with the model's item map), never stopping early.

    With `fixed_shapes` (default: on CUDA) every slot is stepped and ranked and idle ones masked;
    otherwise only the active slots are. With `cuda_graphs` (default: on CUDA with fixed shapes; CUDA
    only) each fixed-shape step is captured once in a graph and replayed.
    """
    if mode not in TIE_MODES:
        raise ValueError(f"tie mode {mode!r}: allowed values are {', '.join(TIE_MODES)}")
    if data.n_items != model.n_items:
        raise ValueError("evaluation data must be built with the model's item map")
    device = model.Wy.device
    fixed_shapes = device.type == "cuda" if fixed_shapes is None else fixed_shapes
    capture = (device.type == "cuda" and fixed_shapes) if cuda_graphs is None else cuda_graphs
    if capture and device.type != "cuda":
        raise ValueError("cuda_graphs needs a CUDA device")
    if capture and not fixed_shapes:
        raise ValueError("cuda_graphs needs fixed_shapes: a graph replays one shape")
    data.check_schedule(batch_size, "predict")
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"the model's {name} holds NaN or infinite values (the training diverged); "
                             "it cannot be evaluated")
    was_training = model.training
    model.eval()
    if device.type == "cpu":
        keep_freed_memory()
    schedule = build_schedule(data.items, data.offsets, batch_size, pad=model.pad)
    inputs = torch.as_tensor(schedule.inputs, device=device)
    targets = torch.as_tensor(schedule.targets, device=device)
    resets = torch.as_tensor(schedule.resets, device=device)[:, :, None]
    cut = torch.as_tensor(sorted(set(cutoffs)), device=device, dtype=torch.float32)
    hits = torch.zeros(len(cut), device=device, dtype=torch.float64)
    rr = torch.zeros(len(cut), device=device, dtype=torch.float64)
    hidden = model.init_hidden(batch_size, device)
    cursor = torch.zeros(1, dtype=torch.int64, device=device)
    chunk = max(1, score_budget(device) // model.n_items)

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def count(rows: torch.Tensor, target: torch.Tensor, active: torch.Tensor | None) -> None:
        """Rank each row's target among all items and add the hits and reciprocal ranks per cut-off."""
        for lo in range(0, len(rows), chunk):
            scores = model.score_all(rows[lo:lo + chunk])
            nonfinite.logical_or_(~torch.isfinite(scores.gather(1, target[lo:lo + chunk, None])).all())
            ranks = ranks_of_targets(scores, target[lo:lo + chunk], mode, in_place=True)
            hit = ranks[:, None] <= cut[None, :]
            if active is not None:
                hit &= active[lo:lo + chunk, None]
            hits.add_(hit.sum(dim=0))
            rr.add_((hit / ranks[:, None].double()).sum(dim=0))

    def fixed_step() -> None:  # every slot, idle ones masked; static buffers only, so that it can be captured
        reset = resets.index_select(0, cursor)[0]
        for buffer in hidden:
            buffer.masked_fill_(reset, 0.0)
        state = list(hidden)
        h = model.step(model.input_table.index_select(0, inputs.index_select(0, cursor)[0]), state)
        for buffer, new in zip(hidden, state):
            buffer.copy_(new)
        target = targets.index_select(0, cursor)[0].long()
        count(h, target.clamp(max=model.n_items - 1), target != model.pad)
        cursor.add_(1)

    def active_step(t: int) -> None:
        """Only the active slots: at the end of a test set most slots are idle, and skipping them
        saves their GRU and scoring work (the original drops finished slots for the same reason)."""
        target = targets[t].long()
        if schedule.n_active[t] == batch_size:
            index, state = None, [buffer.masked_fill_(resets[t], 0.0) for buffer in hidden]
            items = inputs[t]
        else:
            index = (target != model.pad).nonzero().squeeze(1)
            state = [buffer.index_select(0, index).masked_fill_(resets[t, index], 0.0) for buffer in hidden]
            items, target = inputs[t, index], target[index]
        h = model.step(model.input_table.index_select(0, items), state)
        for buffer, new in zip(hidden, state):
            if index is None:
                buffer.copy_(new)
            else:
                buffer.index_copy_(0, index, new)
        count(h, target, None)

    runner = CapturedStep(fixed_step, capture) if fixed_shapes else None
    steps: Iterable[int] = range(schedule.n_steps)
    if progress is not None:
        steps = progress(steps, "evaluation")
    for t in steps:
        if runner is None:
            active_step(t)
        else:
            runner()
    model.train(was_training)
    if nonfinite.item():  # a NaN score compares false with everything: it would rank first
        raise ValueError("evaluation produced NaN or infinite scores; the model cannot be evaluated")
    n = schedule.n_pairs
    keys = [int(k) for k in cut.tolist()]
    recall = (hits / max(n, 1)).tolist()
    mrr = (rr / max(n, 1)).tolist()
    return EvalResult(recall=dict(zip(keys, recall)), mrr=dict(zip(keys, mrr)), n=n, n_dropped=data.n_dropped,
                      cutoffs=[int(k) for k in cutoffs])
