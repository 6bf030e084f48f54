"""Adagrad with classical momentum, dense and on indexed rows of item tables."""
from __future__ import annotations

import torch

EPS = 1e-6
ACC, MOM = 0, 1


class IndexedAdagradM:
    """acc += g^2; mom = momentum * mom - lr * g / sqrt(acc + eps); p += mom (p -= lr * g / ... without momentum).

    Item tables are updated only on the rows a step used, after summing the gradients of duplicate
    rows; every other row, with its accumulator and momentum, stays exactly as it was. Per table row
    the optimiser keeps [acc, mom] side by side, so one gather and one scatter serve both. Duplicates
    are summed in a zeroed scratch table, so no step needs `unique` or a data-dependent shape
    (nothing forces a device synchronisation).
    """

    def __init__(self, dense: list[torch.Tensor], tables: list[torch.Tensor], lr: float, momentum: float,
                 merge_by_unique: bool | None = None):
        self.merge_by_unique = merge_by_unique  # how duplicate rows are merged; None: per table, see step_rows
        self.dense = dense
        self.tables = tables
        self.lr = lr
        self.momentum = momentum
        self.acc = {id(p): torch.zeros_like(p) for p in dense}
        self.mom = {id(p): torch.zeros_like(p) for p in dense} if momentum > 0 else {}
        slots = 2 if momentum > 0 else 1
        self.scratch: dict[int, torch.Tensor] = {}  # made on first use: the CPU path of matrices needs none
        self.row_state = {id(t): t.new_zeros((t.shape[0], slots) + t.shape[1:]) for t in tables}
        for t in tables:
            state = self.row_state[id(t)]
            self.acc[id(t)] = state[:, ACC]
            if momentum > 0:
                self.mom[id(t)] = state[:, MOM]

    @torch.no_grad()
    def step_dense(self, grads: list[torch.Tensor]) -> None:
        """Update every dense parameter from its gradient."""
        params = self.dense
        accs = [self.acc[id(p)] for p in params]
        torch._foreach_addcmul_(accs, grads, grads)
        denom = torch._foreach_add(accs, EPS)
        torch._foreach_sqrt_(denom)
        if self.momentum > 0:
            moms = [self.mom[id(p)] for p in params]
            torch._foreach_mul_(moms, self.momentum)
            torch._foreach_addcdiv_(moms, grads, denom, value=-self.lr)
            torch._foreach_add_(params, moms)
        else:
            torch._foreach_addcdiv_(params, grads, denom, value=-self.lr)

    @torch.no_grad()
    def step_rows(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                  current: torch.Tensor | None = None, unique_rows: bool = False) -> None:
        """Update the `rows` of `table` given the gradient of each gathered row (duplicates allowed).

        `current` may pass `table[rows]` when the caller already gathered it; `unique_rows` says that
        `rows` has no duplicates (then nothing needs merging). For matrices on the
        CPU duplicates are merged with `unique`, which halves the memory traffic; on accelerators,
        where `unique` would synchronise with the host, and for vectors (cheap either way) they are
        summed in the scratch table instead.
        """
        if unique_rows:
            table.index_add_(0, rows, self._row_delta(table, rows, grad))
            return
        unique = self.merge_by_unique
        if unique is None:
            unique = rows.device.type == "cpu" and table.dim() > 1
        if unique:
            rows, inverse = torch.unique(rows, return_inverse=True)
            g = grad.new_zeros((len(rows),) + grad.shape[1:]).index_add_(0, inverse, grad)
            table.index_add_(0, rows, self._row_delta(table, rows, g))
            return
        scratch = self.scratch.get(id(table))
        if scratch is None:
            scratch = self.scratch[id(table)] = torch.zeros_like(table)
        scratch.index_add_(0, rows, grad)
        g = scratch.index_select(0, rows)
        scratch.index_fill_(0, rows, 0.0)
        if current is None:
            current = table.index_select(0, rows)
        table.index_copy_(0, rows, current + self._row_delta(table, rows, g))

    def _row_delta(self, table: torch.Tensor, rows: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Advance acc (and mom) of `rows` given their summed gradients; return the parameter change."""
        state = self.row_state[id(table)]
        gathered = state.index_select(0, rows)
        acc = gathered[:, ACC].addcmul_(g, g)
        step = g.mul_(acc.add(EPS).rsqrt_())
        if self.momentum > 0:
            delta = gathered[:, MOM].mul_(self.momentum).sub_(step, alpha=self.lr)
        else:
            delta = step.mul_(-self.lr)
        state.index_copy_(0, rows, gathered)
        return delta

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Accumulators and momenta, keyed by parameter position (dense first, then tables)."""
        state = {}
        for i, p in enumerate(self.dense + self.tables):
            state[f"acc.{i}"] = self.acc[id(p)].contiguous()
            if self.momentum > 0:
                state[f"mom.{i}"] = self.mom[id(p)].contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, p in enumerate(self.dense + self.tables):
            self.acc[id(p)].copy_(state[f"acc.{i}"])
            if self.momentum > 0:
                self.mom[id(p)].copy_(state[f"mom.{i}"])
