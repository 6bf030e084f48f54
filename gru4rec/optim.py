"""Adagrad with classical momentum, dense and on indexed rows of item tables (spec 7)."""
from __future__ import annotations

import torch

EPS = 1e-6


class IndexedAdagradM:
    """acc += g^2; mom = momentum * mom - lr * g / sqrt(acc + eps); p += mom (p -= lr * g / ... without momentum).

    Item tables are updated only on the rows a step used, after summing the gradients of duplicate
    rows; every other row, with its accumulator and momentum, stays exactly as it was. Duplicates
    are summed through a zeroed scratch table, so no step needs `unique` or a data-dependent shape.
    """

    def __init__(self, dense: list[torch.Tensor], tables: list[torch.Tensor], lr: float, momentum: float):
        self.dense = dense
        self.tables = tables
        self.lr = lr
        self.momentum = momentum
        self.acc = {id(p): torch.zeros_like(p) for p in dense + tables}
        self.mom = {id(p): torch.zeros_like(p) for p in dense + tables} if momentum > 0 else {}
        self.scratch = {id(p): torch.zeros_like(p) for p in tables}

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
    def step_rows(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Update the `rows` of `table` given the gradient of each gathered row (duplicates allowed)."""
        scratch = self.scratch[id(table)]
        scratch.index_add_(0, rows, grad)
        g = scratch.index_select(0, rows)
        scratch.index_fill_(0, rows, 0.0)
        acc = self.acc[id(table)]
        new_acc = acc.index_select(0, rows).addcmul_(g, g)
        acc.index_copy_(0, rows, new_acc)
        step = g.div_(new_acc.add_(EPS).sqrt_())
        if self.momentum > 0:
            mom = self.mom[id(table)]
            new_mom = mom.index_select(0, rows).mul_(self.momentum).sub_(step, alpha=self.lr)
            mom.index_copy_(0, rows, new_mom)
            table.index_copy_(0, rows, table.index_select(0, rows).add_(new_mom))
        else:
            table.index_copy_(0, rows, table.index_select(0, rows).sub_(step, alpha=self.lr))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Accumulators and momenta, keyed by parameter position (dense first, then tables)."""
        state = {}
        for i, p in enumerate(self.dense + self.tables):
            state[f"acc.{i}"] = self.acc[id(p)]
            if self.momentum > 0:
                state[f"mom.{i}"] = self.mom[id(p)]
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, p in enumerate(self.dense + self.tables):
            self.acc[id(p)].copy_(state[f"acc.{i}"])
            if self.momentum > 0:
                self.mom[id(p)].copy_(state[f"mom.{i}"])
