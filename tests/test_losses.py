"""Both losses against float64 NumPy transcriptions of the original formulas, their gradients against autograd."""
import numpy as np
import pytest
import torch

from gru4rec.losses import bpr_max, cross_entropy


def xe_reference(O, log_q):
    O = O - log_q
    X = np.exp(O - O.max(axis=1, keepdims=True))
    X = X / X.sum(axis=1, keepdims=True)
    return -np.log(np.diag(X) + 1e-24)


def bpr_max_reference(O, elu, bpreg):
    if elu > 0:
        O = np.where(O > 0, O, elu * (np.exp(O) - 1))
    hm = 1.0 - np.eye(*O.shape)
    e = np.exp(O * hm - (O * hm).max(axis=1, keepdims=True)) * hm
    s = e / e.sum(axis=1, keepdims=True)
    target = np.diag(O)[:, None]
    sig = 1.0 / (1.0 + np.exp(-(target - O)))
    return -np.log((sig * s).sum(axis=1) + 1e-24) + bpreg * (O ** 2 * s).sum(axis=1)


def random_scores(rows, cols, seed, scale=3.0):
    return np.random.default_rng(seed).normal(size=(rows, cols)) * scale


@pytest.mark.parametrize("logq", [0.0, 0.5, 1.0])
def test_cross_entropy_matches_reference(logq):
    O = random_scores(6, 16, seed=1)
    counts = np.random.default_rng(2).integers(1, 500, size=16).astype(float)
    log_q = logq * np.log(counts)
    valid = torch.ones(16, dtype=torch.bool)
    got = cross_entropy(torch.tensor(O), valid, torch.tensor(log_q) if logq else None)[0].numpy()
    np.testing.assert_allclose(got, xe_reference(O, log_q), rtol=1e-12, atol=1e-12)


def test_cross_entropy_keeps_the_original_guard_where_p_underflows():
    O = np.array([[-200.0, 200.0], [0.0, 1.0]])
    got = cross_entropy(torch.tensor(O), torch.ones(2, dtype=torch.bool))[0].numpy()
    np.testing.assert_allclose(got, xe_reference(O, 0.0), rtol=1e-12)
    assert np.isclose(got[0], -np.log(1e-24))


@pytest.mark.parametrize("elu,bpreg", [(0.0, 0.0), (0.5, 1.0), (1.0, 1.95), (0.5, 0.0)])
def test_bpr_max_matches_reference(elu, bpreg):
    O = random_scores(5, 13, seed=3)
    got = bpr_max(torch.tensor(O), torch.ones(13, dtype=torch.bool), elu, bpreg)[0].numpy()
    np.testing.assert_allclose(got, bpr_max_reference(O, elu, bpreg), rtol=1e-10, atol=1e-12)


def test_idle_slots_are_masked_like_a_smaller_batch():
    """Slots 1 and 3 idle: the loss of the rest equals the reference on the matrix without them."""
    O = random_scores(5, 5 + 7, seed=4)
    valid = torch.ones(12, dtype=torch.bool)
    valid[[1, 3]] = False
    keep_rows = [0, 2, 4]
    keep_cols = keep_rows + list(range(5, 12))
    small = O[np.ix_(keep_rows, keep_cols)]
    log_q = np.random.default_rng(5).normal(size=12)
    xe = cross_entropy(torch.tensor(O), valid, torch.tensor(log_q))[0].numpy()
    np.testing.assert_allclose(xe[keep_rows], xe_reference(small, log_q[keep_cols]), rtol=1e-12)
    assert (xe[[1, 3]] == 0).all()
    bpr = bpr_max(torch.tensor(O), valid, 0.5, 1.0)[0].numpy()
    np.testing.assert_allclose(bpr[keep_rows], bpr_max_reference(small, 0.5, 1.0), rtol=1e-10)
    assert (bpr[[1, 3]] == 0).all()


def autograd_xe(O, valid, log_q):
    """The loss written with autograd ops only: what the hand-derived gradient must equal."""
    if log_q is not None:
        O = O - log_q
    if valid is not None:
        O = O.masked_fill(~valid, float("-inf"))
    p = torch.softmax(O, dim=1).diagonal()
    rows = -torch.log(p + 1e-24)
    return rows if valid is None else torch.where(valid[:O.shape[0]], rows, 0.0)


def autograd_bpr(O, valid, elu, bpreg):
    if elu > 0:
        O = torch.nn.functional.elu(O, elu)
    negatives = torch.ones(O.shape, dtype=torch.bool)
    negatives[:, :O.shape[0]].fill_diagonal_(False)
    if valid is not None:
        negatives &= valid
    s = torch.softmax(O.masked_fill(~negatives, float("-inf")), dim=1)
    rows = -torch.log((torch.sigmoid(O.diagonal()[:, None] - O) * s).sum(1) + 1e-24) + bpreg * (s * O ** 2).sum(1)
    return rows if valid is None else torch.where(valid[:O.shape[0]], rows, 0.0)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_hand_derived_gradients_equal_autograd(masked, scale):
    O = torch.tensor(random_scores(5, 12, seed=7), requires_grad=True)
    valid = None
    if masked:
        valid = torch.ones(12, dtype=torch.bool)
        valid[[1, 3, 8]] = False
    log_q = torch.tensor(np.random.default_rng(8).normal(size=12))
    rows, grad = cross_entropy(O.detach(), valid, log_q, scale)
    expected = autograd_xe(O, valid, log_q)
    torch.testing.assert_close(rows, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum() * scale, O)[0], rtol=1e-10, atol=1e-12)
    for elu, bpreg in ((0.0, 0.0), (0.5, 1.0), (1.0, 1.95), (0.5, 0.0)):
        rows, grad = bpr_max(O.detach(), valid, elu, bpreg, scale)
        expected = autograd_bpr(O, valid, elu, bpreg)
        torch.testing.assert_close(rows, expected.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, torch.autograd.grad(expected.sum() * scale, O)[0], rtol=1e-10, atol=1e-12)
        if valid is not None:  # idle rows and masked columns get nothing
            assert (grad[[1, 3]] == 0).all() and (grad[:, [1, 3, 8]] == 0).all()


def test_masked_losses_have_finite_gradients():
    O = torch.tensor(random_scores(4, 9, seed=6))
    valid = torch.ones(9, dtype=torch.bool)
    valid[2] = False
    for _, grad in (cross_entropy(O, valid), bpr_max(O, valid, 1.0, 1.0)):
        assert torch.isfinite(grad).all()
        assert (grad[2] == 0).all() and (grad[:, 2] == 0).all()
