"""Adagrad with classical momentum, dense and on indexed rows of item tables."""
from __future__ import annotations

import torch

EPS = 1e-6


class IndexedAdagradM:
    """acc += g^2; mom = momentum * mom - lr * g / sqrt(acc + eps); p += mom (p -= lr * g / ... without momentum).

    Item tables are updated only on the rows a step used, after summing the gradients of duplicate
    rows; every other row, with its accumulator and momentum, stays exactly as it was. Accumulators and
    momenta are contiguous tables of their own (row gathers and scatters on them are the fast kind).
    Duplicates are summed in a zeroed scratch table, so no step needs `unique` or a data-dependent shape
    (nothing forces a device synchronisation); CPU matrices merge them with `unique` instead.
    """

    def __init__(self, dense: list[torch.Tensor], tables: list[torch.Tensor], lr: float, momentum: float,
                 merge_by_unique: bool | None = None):
        self.merge_by_unique = merge_by_unique  # how duplicate rows are merged; None: per table, see step_rows
        self.dense = dense
        self.tables = tables
        self.lr = lr
        self.momentum = momentum
        # Dense state lives in flat buffers (one kernel per update op instead of one per parameter);
        # `acc`/`mom` hold views of them, and of the item tables' own state tables.
        size = sum(p.numel() for p in dense)
        like = dict(device=dense[0].device, dtype=dense[0].dtype) if dense else {}
        self.dense_acc = torch.zeros(size, **like)
        self.dense_mom = torch.zeros(size if momentum > 0 else 0, **like)
        self.acc, self.mom = {}, {}
        offset = 0
        for p in dense:
            n = p.numel()
            self.acc[id(p)] = self.dense_acc[offset:offset + n].view_as(p)
            if momentum > 0:
                self.mom[id(p)] = self.dense_mom[offset:offset + n].view_as(p)
            offset += n
        for t in tables:
            self.acc[id(t)] = torch.zeros_like(t)
            if momentum > 0:
                self.mom[id(t)] = torch.zeros_like(t)
        self.scratch: dict[int, torch.Tensor] = {}  # made on first use: the CPU path of matrices needs none

    @torch.no_grad()
    def step_dense(self, grads: list[torch.Tensor]) -> None:
        """Update every dense parameter from its gradient (given in the order of `dense`)."""
        if not self.dense:
            return
        g = torch.cat([grad.reshape(-1) for grad in grads])
        acc = self.dense_acc.addcmul_(g, g)
        denom = acc.add(EPS).sqrt_()
        if self.momentum > 0:
            step = self.dense_mom.mul_(self.momentum).addcdiv_(g, denom, value=-self.lr)
        else:
            step = g.div_(denom).mul_(-self.lr)
        offset = 0
        for p in self.dense:
            n = p.numel()
            p.add_(step[offset:offset + n].view_as(p))
            offset += n

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
            table.index_add_(0, rows, self._row_delta(table, rows, grad, unique_rows=True))
            return
        unique = self.merge_by_unique
        if unique is None:
            unique = rows.device.type == "cpu" and table.dim() > 1
        if unique:
            rows, inverse = torch.unique(rows, return_inverse=True)
            g = grad.new_zeros((len(rows),) + grad.shape[1:]).index_add_(0, inverse, grad)
            table.index_add_(0, rows, self._row_delta(table, rows, g, unique_rows=True))
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

    def _row_delta(self, table: torch.Tensor, rows: torch.Tensor, g: torch.Tensor, unique_rows: bool = False
                   ) -> torch.Tensor:
        """Advance acc (and mom) of `rows` given their summed gradients; return the parameter change.

        With duplicate `rows` (the scratch path) every copy carries the same merged gradient, so the
        duplicate writes agree; with `unique_rows` the accumulator is advanced by adding g^2 in place
        (a row scatter-add is cheaper than a gather and a row copy on the CPU).
        """
        acc_table = self.acc[id(table)]
        if unique_rows:
            acc_table.index_add_(0, rows, g * g)
            denom = acc_table.index_select(0, rows)
        else:
            denom = acc_table.index_select(0, rows).addcmul_(g, g)
            acc_table.index_copy_(0, rows, denom)
        denom = denom.add_(EPS).sqrt_()  # sqrt and a division: several times faster than rsqrt on the CPU
        if self.momentum == 0:
            return g.div_(denom).mul_(-self.lr)  # `g` is a temporary of the caller or of step_rows
        mom_table = self.mom[id(table)]
        mom = mom_table.index_select(0, rows).mul_(self.momentum).addcdiv_(g, denom, value=-self.lr)
        mom_table.index_copy_(0, rows, mom)
        return mom

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Accumulators and momenta, keyed by parameter position (dense first, then tables)."""
        state = {}
        for i, p in enumerate(self.dense + self.tables):
            state[f"acc.{i}"] = self.acc[id(p)].clone()  # copies: dense views share one buffer
            if self.momentum > 0:
                state[f"mom.{i}"] = self.mom[id(p)].clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, p in enumerate(self.dense + self.tables):
            self.acc[id(p)].copy_(state[f"acc.{i}"])
            if self.momentum > 0:
                self.mom[id(p)].copy_(state[f"mom.{i}"])
