"""The GRU4Rec network: input by embedding mode, stacked GRU layers, scores against Wy and By.

Item tables (Wy, By, the separate embedding E, and the one-hot input table of mode none) carry one
extra zero row at index `n_items`, the padding item of idle slots; it never receives a gradient.
The caller gathers the item rows a step needs and passes them in, so gradients stay row-sized.
Training computes its gradients by hand (`train_forward` keeps what `train_backward` needs): with
backpropagation through one step only, a layer's backward is a few fused elementwise ops and three
matrix products, far cheaper per step than recording an autograd graph.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import Config


INIT_CHUNK = 1 << 22  # float64 draws held at once while a table is initialised


def uniform_blocks(rows: int, cols: int, blocks: int, generator: torch.Generator,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """A (rows, cols * blocks) float32 matrix, each (rows, cols) block uniform in +-sqrt(6 / (rows + cols)).

    The values are drawn in float64 and rounded, block after block, row after row; drawing a few rows at a
    time consumes the generator exactly as one draw of the whole block would, so no float64 copy of a
    large item table is ever made. With `out`, its first `rows` rows are filled and returned.
    """
    bound = math.sqrt(6.0 / (rows + cols))
    if out is None:
        out = torch.empty(rows, cols * blocks)
    step = max(1, INIT_CHUNK // max(cols, 1))
    for block in range(blocks):
        for lo in range(0, rows, step):
            n = min(step, rows - lo)
            draw = torch.rand(n, cols, generator=generator, dtype=torch.float64)
            out[lo:lo + n, block * cols:(block + 1) * cols] = (draw * 2 - 1) * bound
    return out


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted dropout drawing its mask from `generator`, so training is reproducible and resumable."""
    if p <= 0:
        return x
    return x * dropout_mask(x, p, generator)


def dropout_mask(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """The scaled keep mask of inverted dropout (0 or 1 / (1 - p)) for a tensor shaped like `x`."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return keep * (1.0 / (1.0 - p))


class GRU4Rec(nn.Module):
    """Parameters and forward computation of GRU4Rec for `n_items` items."""

    def __init__(self, config: Config, n_items: int, generator: torch.Generator | None = None):
        super().__init__()
        if generator is None:
            generator = torch.Generator().manual_seed(config.seed)
        self.config = config
        self.n_items = n_items
        self.mode = config.embedding_mode
        layers = config.layers
        h_last = layers[-1]

        def item_table(width: int, blocks: int = 1) -> nn.Parameter:
            table = torch.zeros(n_items + 1, width * blocks)  # the last row is the padding item
            return nn.Parameter(uniform_blocks(n_items, width, blocks, generator, out=table))

        self.Wy = item_table(h_last)
        self.By = nn.Parameter(torch.zeros(n_items + 1))
        if self.mode == "separate":
            self.E = item_table(config.embedding)
            in_size = config.embedding
        elif self.mode == "shared":
            in_size = h_last
        else:
            # Original GRU formulation for the one-hot first layer: gates laid out (n, r, z).
            h0 = layers[0]
            self.Wx0 = item_table(h0, 3)
            self.Urz0 = nn.Parameter(uniform_blocks(h0, h0, 2, generator))
            self.Un0 = nn.Parameter(uniform_blocks(h0, h0, 1, generator))
            self.b0 = nn.Parameter(torch.zeros(3 * h0))
            in_size = h0
        first_cell = 1 if self.mode == "none" else 0
        self.cells = nn.ModuleList()
        for i, size in enumerate(layers[first_cell:], start=first_cell):
            cell = nn.GRUCell(in_size, size)
            with torch.no_grad():
                cell.weight_ih.copy_(uniform_blocks(size, in_size, 3, generator).view(size, 3, in_size)
                                     .transpose(0, 1).reshape(3 * size, in_size))
                cell.weight_hh.copy_(uniform_blocks(size, size, 3, generator).view(size, 3, size)
                                     .transpose(0, 1).reshape(3 * size, size))
                cell.bias_ih.zero_()
                cell.bias_hh.zero_()
            self.cells.append(cell)
            in_size = size

    @property
    def pad(self) -> int:
        """Index of the padding row of the item tables."""
        return self.n_items

    @property
    def input_table(self) -> nn.Parameter:
        """The item table whose rows are the first layer's input."""
        return {"shared": self.Wy, "separate": getattr(self, "E", None), "none": getattr(self, "Wx0", None)}[self.mode]

    def item_tables(self) -> list[nn.Parameter]:
        """Parameters updated row by row by the optimiser."""
        tables = [self.Wy, self.By]
        if self.mode != "shared":
            tables.append(self.input_table)
        return tables

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters updated as a whole, in the order `train_backward` returns their gradients."""
        first = [self.Urz0, self.Un0, self.b0] if self.mode == "none" else []
        return first + [p for cell in self.cells for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]

    def init_hidden(self, batch: int, device: torch.device) -> list[torch.Tensor]:
        return [torch.zeros(batch, size, device=device) for size in self.config.layers]

    def step(self, x: torch.Tensor, hidden: list[torch.Tensor],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Advance all layers one step from the input rows `x`; update `hidden` in place (list items).

        With a generator, dropout is applied (training); the dropped-out output is also what each
        layer carries to the next step, as in the original. Returns the last layer's output.
        """
        cfg = self.config
        p_embed = cfg.dropout_p_embed if generator is not None else 0.0
        p_hidden = cfg.dropout_p_hidden if generator is not None else 0.0
        first = 0
        if self.mode == "none":
            x = dropout(self._one_hot_layer(x, hidden[0])[-1], p_embed, generator)
            hidden[0] = x
            first = 1
        else:
            x = dropout(x, p_embed, generator)
        for i, cell in enumerate(self.cells, start=first):
            x = dropout(cell(x, hidden[i]), p_hidden, generator)
            hidden[i] = x
        return x

    def _one_hot_layer(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The original GRU layer of mode none on the input rows `x` (its input product): r, z, n, r*h, h'."""
        xn, xr, xz = (x + self.b0).chunk(3, dim=1)
        hr, hz = (h @ self.Urz0).chunk(2, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        rh = r * h
        n = torch.tanh(torch.addmm(xn, rh, self.Un0))
        return r, z, n, rh, torch.lerp(h, n, z)

    @torch.no_grad()
    def train_forward(self, x: torch.Tensor, hidden: list[torch.Tensor],
                      generator: torch.Generator) -> tuple[torch.Tensor, list]:
        """`step` with dropout, keeping what `train_backward` needs; returns (output, cache).

        Draws the same dropout masks in the same order as `step` with a generator.
        """
        cfg = self.config
        cache: list = []
        first = 0
        if self.mode == "none":
            h = hidden[0]
            r, z, n, rh, out = self._one_hot_layer(x, h)
            mask = dropout_mask(out, cfg.dropout_p_embed, generator) if cfg.dropout_p_embed > 0 else None
            x = out if mask is None else out * mask
            hidden[0] = x
            cache.append((h, r, z, n, rh, mask))
            first = 1
        else:
            mask = dropout_mask(x, cfg.dropout_p_embed, generator) if cfg.dropout_p_embed > 0 else None
            cache.append(mask)
            if mask is not None:
                x = x * mask
        for i, cell in enumerate(self.cells, start=first):
            h = hidden[i]
            size = cell.hidden_size
            gi = torch.addmm(cell.bias_ih, x, cell.weight_ih.T)
            gh = torch.addmm(cell.bias_hh, h, cell.weight_hh.T)
            rz = torch.sigmoid(gi[:, :2 * size] + gh[:, :2 * size])
            r, z = rz[:, :size], rz[:, size:]
            ghn = gh[:, 2 * size:]
            n = torch.tanh(torch.addcmul(gi[:, 2 * size:], r, ghn))
            out = torch.lerp(n, h, z)
            mask = dropout_mask(out, cfg.dropout_p_hidden, generator) if cfg.dropout_p_hidden > 0 else None
            cache.append((x, h, rz, n, ghn, mask))
            x = out if mask is None else out * mask
            hidden[i] = x
        return x, cache

    @torch.no_grad()
    def train_backward(self, cache: list, grad: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of the dense parameters (in `dense_parameters` order) and of the input rows.

        `grad` is the gradient of the loss with respect to `train_forward`'s output; no gradient flows
        into the hidden state of the previous step (backpropagation through one step).
        """
        grads: list[list[torch.Tensor]] = []
        for i in range(len(self.cells) - 1, -1, -1):
            weight_ih = self.cells[i].weight_ih
            x, h, rz, n, ghn, mask = cache[1 + i]
            size = n.shape[1]
            if mask is not None:
                grad = grad * mask
            r, z = rz[:, :size], rz[:, size:]
            dan = grad * (1 - z) * (1 - n * n)
            dgi = rz.new_empty((rz.shape[0], 3 * size))
            torch.mul(dan * ghn, r * (1 - r), out=dgi[:, :size])
            torch.mul(grad * (h - n), z * (1 - z), out=dgi[:, size:2 * size])
            dgi[:, 2 * size:] = dan
            dgh = dgi.clone()
            dgh[:, 2 * size:].mul_(r)
            grads.append([dgi.T @ x, dgh.T @ h, dgi.sum(0), dgh.sum(0)])
            grad = dgi @ weight_ih
        if self.mode == "none":
            h, r, z, n, rh, mask = cache[0]
            if mask is not None:
                grad = grad * mask
            dan = grad * z * (1 - n * n)
            dr = (dan @ self.Un0.T) * h
            dx = torch.cat([dan, dr * r * (1 - r), grad * (n - h) * z * (1 - z)], dim=1)
            grads.append([h.T @ dx[:, h.shape[1]:], rh.T @ dan, dx.sum(0)])
        else:
            mask = cache[0]
            dx = grad if mask is None else grad * mask
        return [g for layer in reversed(grads) for g in layer], dx

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item (not the padding row) for each row of `h`."""
        return torch.addmm(self.By[:self.n_items], h, self.Wy[:self.n_items].T)
