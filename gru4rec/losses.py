"""The two GRU4Rec losses on a score matrix whose target for row j is column j, with their gradients.

`valid` masks the columns that take part (idle slots' targets are excluded); idle rows give zero loss
and zero gradient. `valid=None` means every column takes part (the common case, which then skips the
masking). Each loss returns the per-row losses and the gradient of `scale` times their sum with
respect to the scores, derived by hand: training needs nothing else, so no autograd graph is built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

def _column_offsets(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 for the columns that take part, -inf for the others: added to a score row, it masks in one pass."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))


def cross_entropy(scores: torch.Tensor, valid: torch.Tensor | None, log_q: torch.Tensor | None = None,
                  scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy -log(p_jj + 1e-24), the original's guarded form; `log_q` (already scaled by
    the logq strength) is subtracted per column.

    The gradient of -log(p_jj + eps) is c_j (p_j - e_j) with c_j = p_jj / (p_jj + eps).
    """
    offsets = None if log_q is None else -log_q
    if valid is not None:
        masks = _column_offsets(valid, scores.dtype)
        offsets = masks if offsets is None else offsets + masks
    p = torch.softmax(scores if offsets is None else scores + offsets, dim=1)
    target = p.diagonal()
    rows = -torch.log(target + 1e-24)
    c = target / (target + 1e-24)
    if valid is not None:
        active = valid[:scores.shape[0]]
        rows = rows * active
        c = c * active
    c = c * scale
    grad = p.mul_(c[:, None])
    grad.diagonal().sub_(c)
    return rows, grad


def bpr_max(scores: torch.Tensor, valid: torch.Tensor | None, elu_param: float, bpreg: float,
            scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR-max: softmax-weighted BPR over the negatives plus bpreg times the weighted squared scores.

    The negatives of row j are all columns but j. With s their softmax weights, sigma_k =
    sigmoid(o_j - o_k), R = sum s sigma and Q = sum s o^2, the loss is -log(R + eps) + bpreg Q; its
    gradient is, for a negative k, a s_k (sigma_k^2 - R) + b s_k (o_k^2 + 2 o_k - Q) with
    a = -1 / (R + eps) and b = bpreg, and for the target a sum_k s_k sigma_k (1 - sigma_k); an ELU in
    front multiplies it by its slope. Written as few passes over the score matrix as possible.
    """
    o = F.elu(scores, alpha=elu_param) if elu_param > 0 else scores
    negatives = o.clone() if valid is None else o + _column_offsets(valid, o.dtype)
    negatives.diagonal().fill_(float("-inf"))
    s = torch.softmax(negatives, dim=1)
    sig = torch.sub(o.diagonal()[:, None], o).sigmoid_()
    s_sig = s * sig
    ranked = s_sig.sum(dim=1)
    weighted_square = s * o.square()
    reg = weighted_square.sum(dim=1)
    rows = -torch.log(ranked + 1e-24) + bpreg * reg
    a = -scale / (ranked + 1e-24)
    b = bpreg * scale
    grad = s_sig.mul_(sig)  # s sigma^2
    target = a * (ranked - grad.sum(dim=1))
    grad.mul_(a[:, None])
    grad.addcmul_(s, (-(a * ranked) - b * reg)[:, None])
    if bpreg > 0:
        grad.add_(weighted_square, alpha=b).addcmul_(s, o, value=2 * b)
    grad.diagonal().add_(target)
    if elu_param > 0:  # the ELU's slope, from its output: 1 above 0, o + alpha below
        grad = torch.ops.aten.elu_backward(grad, elu_param, 1, 1, True, o)
    if valid is not None:
        active = valid[:scores.shape[0]]
        rows = rows * active
        grad.mul_(active[:, None])
    return rows, grad
