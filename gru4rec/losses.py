"""The two GRU4Rec losses on a score matrix whose target for row j is column j.

`valid` masks the columns that take part (idle slots' targets are excluded); idle rows give zero loss.
`valid=None` means every column takes part (the common case, which then skips the masking).
Both return the per-row losses; the trainer sums them and divides by the configured batch size.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

_LOG_EPS = math.log(1e-24)


@functools.lru_cache(maxsize=16)
def _constants(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """log(1e-24) as a tensor, and the mask of the off-diagonal (negative) columns; made once per shape."""
    off_diagonal = torch.ones(rows, cols, dtype=torch.bool, device=device)
    off_diagonal[:, :rows].fill_diagonal_(False)
    return torch.tensor(_LOG_EPS, device=device, dtype=dtype), off_diagonal


def _neg_log(log_p: torch.Tensor) -> torch.Tensor:
    """-log(p + 1e-24) from log p: the original's guarded value, computed without underflow."""
    log_eps, _ = _constants(1, 1, log_p.device, log_p.dtype)
    return -torch.logaddexp(log_p, log_eps)


def cross_entropy(scores: torch.Tensor, valid: torch.Tensor | None,
                  log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy; `log_q` (already scaled by the logq strength) is subtracted per column."""
    if log_q is not None:
        scores = scores - log_q
    if valid is None:
        return _neg_log(torch.log_softmax(scores, dim=1).diagonal())
    scores = scores.masked_fill(~valid, float("-inf"))
    log_p = torch.log_softmax(scores, dim=1).diagonal()
    return torch.where(valid[: scores.shape[0]], _neg_log(log_p), 0.0)


def bpr_max(scores: torch.Tensor, valid: torch.Tensor | None, elu_param: float, bpreg: float) -> torch.Tensor:
    """BPR-max: softmax-weighted BPR over the negatives plus bpreg times the weighted squared scores."""
    if elu_param > 0:
        scores = F.elu(scores, alpha=elu_param)
    rows = scores.shape[0]
    _, negatives = _constants(rows, scores.shape[1], scores.device, scores.dtype)
    if valid is not None:
        negatives = negatives & valid
    weights = torch.softmax(scores.masked_fill(~negatives, float("-inf")), dim=1)
    target = scores.diagonal()[:, None]
    ranked = (torch.sigmoid(target - scores) * weights).sum(dim=1)
    loss = -torch.log(ranked + 1e-24) + bpreg * (weights * scores.square()).sum(dim=1)
    return loss if valid is None else torch.where(valid[:rows], loss, 0.0)
